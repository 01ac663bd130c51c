"""Helpers for the black-box integration suite.

Everything here talks to real things: a real gunicorn process with gevent workers,
real WebSocket clients over real sockets, a real PostgreSQL database. Nothing mocks
the server; nothing sleeps to synchronise (frames are awaited with receive timeouts).
"""
