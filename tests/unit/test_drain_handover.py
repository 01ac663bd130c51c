"""drain.sibling_answers: on a reload the old worker's first close waits until another
worker answers on the listening socket (issue 22). Real sockets on 127.0.0.1; the
"sibling" is a thread that accepts when the test lets it."""
import socket
import threading

from fonana_realtime.drain import sibling_answers


def listening(host="127.0.0.1"):
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen(8)
    return sock


def test_it_returns_once_a_worker_accepting_late_has_answered():
    listener = listening()
    go, answered, asked = threading.Event(), threading.Event(), []

    def sibling():                  # starts serving only when the test says so
        go.wait(10)
        conn, _ = listener.accept()
        with conn:
            asked.append(conn.recv(1024))
            answered.set()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=sibling, daemon=True).start()
    result = []
    probe = threading.Thread(target=lambda: result.append(sibling_answers([listener], timeout=10)))
    probe.start()
    probe.join(0.3)
    assert probe.is_alive() and not result      # nobody serves yet: still waiting
    go.set()
    probe.join(10)
    assert result == [True] and answered.is_set()
    assert asked[0].startswith(b"GET /ready HTTP/1.0\r\n")
    listener.close()


def test_a_listener_on_every_address_is_probed_on_loopback():
    listener = listening("0.0.0.0")
    threading.Thread(target=lambda: listener.accept()[0].sendall(b"HTTP/1.1 503 x\r\n\r\n"), daemon=True).start()
    assert sibling_answers([listener], timeout=10) is True       # a 503 is an answer too
    listener.close()


def test_without_anyone_serving_it_gives_up_after_its_timeout():
    listener = listening()          # never accepted: the probe sits in the backlog
    assert sibling_answers([listener], timeout=0.3) is False
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))   # bound, not listening: connection refused
    assert sibling_answers([closed], timeout=1) is False
    listener.close()
    closed.close()
