"""gunicorn settings: gevent workers, bind, worker count, logs, metrics directory.

Launch: gunicorn -c gunicorn.conf.py wsgi:app
"""
import multiprocessing
import os
import sys
import tempfile

from fonana_realtime.logs import console_format, logging_config
from fonana_realtime.settings import SettingsError, load_settings

try:
    _settings = load_settings()
except SettingsError as exc:
    print(f"fonana-realtime: refusing to start: {exc}", file=sys.stderr)
    sys.exit(1)

bind = [f"{_settings.host}:{_settings.port}"]
worker_class = "fonana_realtime.gunicorn_worker.DrainingGeventWorker"
worker_connections = _settings.worker_connections
backlog = 2048
# Long-lived WebSocket requests are fine: gevent workers heartbeat independently.
timeout = 30
# The drain (WS_DRAIN_SECONDS + drain.LINGER) must end inside the graceful timeout.
graceful_timeout = int(_settings.drain_seconds) + 15
keepalive = 5
# The browser sends its token in the query string: allow request lines up to gunicorn's
# maximum (8190; 0 would mean unbounded, a memory attack) so nearly every token up to
# auth.MAX_TOKEN_BYTES is judged by us. A longer line (or header) is answered by
# DrainingGeventWorker.handle_error with the same JSON 401 `invalid_token`, not gunicorn's
# HTML 414/431.
limit_request_line = 8190
# gunicorn's C parser (gunicorn-h1c, pinned in requirements.txt) when it is installed, else
# its Python parser. Parsing a browser's upgrade request took 94 µs with the Python parser
# and 72 µs with the C one (gunicorn's RequestParser alone, same machine, under load):
# ~3 % of a connect in a reconnect storm.
http_parser = "auto"
# Several instances may run on one host (tests, blue/green): no shared control socket.
control_socket_disable = True

if _settings.redis_url:
    workers = _settings.workers or multiprocessing.cpu_count()
    _why_workers = f"{workers} gevent worker(s), fan-out through Redis"
    # One listening socket shared by the workers (gunicorn's default), not reuse_port: the
    # accept skew between gevent workers did not show here (issue 11, bench/run --only
    # storm2: 2,000 connects split 51/49 with 200 in flight, 53/47 one at a time; with
    # reuse_port 50/50 and 55/45), and reuse_port would reset the connections a worker had
    # not yet accepted when it exits, which is what a reload does in a reconnect storm.
    # Measured again after the worker accepted 8 per wake-up: 2 workers with reuse_port
    # reached 1.12-1.21x one worker, the shared socket 1.6-2.1x.
else:
    workers = 1
    _why_workers = "1 gevent worker: without REDIS_URL events are delivered in-process only"
    if _settings.workers and _settings.workers != 1:
        _why_workers += f" (WS_WORKERS={_settings.workers} ignored)"

# Logs: JSON lines in LOG_DIR, and on stdout JSON or text (LOG_FORMAT; unset: text on the
# embedded default in a terminal); the access log shows the path only (%(U)s), never the
# query string, which carries the browser's token.
logconfig_dict = logging_config(_settings.log_dir or None, _settings.log_level,
                                console_format(_settings.log_format, _settings.production))
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)ss'

# prometheus-client multiprocess mode: a fresh directory shared by this master's workers.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fonana-rt-metrics-")


def _python() -> str:
    """This interpreter as the reader would type it: `.venv/bin/python` from the repository."""
    relative = os.path.relpath(sys.executable)
    return sys.executable if relative.startswith("..") else relative


def when_ready(server):
    server.log.info("fonana-realtime listening on %s: %s", ", ".join(bind), _why_workers)
    if _settings.production:
        return
    if _settings.host in ("127.0.0.1", "localhost", "::1"):
        server.log.info("embedded default: reachable from this machine only (%s); WS_HOST=0.0.0.0 serves "
                        "the network, dev secrets and demo data included", _settings.host)
    # Once, at start: what a newcomer needs next (README "Try it").
    server.log.info("try it: TOKEN=$(%s -m fonana_realtime token demo-fan)  KEY=$(%s -m fonana_realtime api-key)",
                    _python(), _python())


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
    # a worker killed without a goodbye leaves its legacy connections' live marks: they
    # depart now, as a drain would have made them (fonana_realtime/live_marks.py)
    from fonana_realtime.live_marks import release_worker
    release_worker(_settings, worker.pid)
