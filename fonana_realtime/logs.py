"""Structured logging: one JSON object per line, to stdout and to LOG_DIR's
ws-out.log (info and up), ws-error.log (errors) and ws-combined.log (everything).
The console may show the same records as text for people instead (LOG_FORMAT=text, the
default of the embedded default on a terminal: `console_format`); the files stay JSON.

A redacting filter sits on every handler as a last line of defence: whatever a
library prints, a JWT, a `token=` query value or a bearer key never reaches a log.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time

from . import turn_end

_SECRETS = re.compile(
    r"(eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*)"       # JWTs
    r"|((?<=token=)[^&\s\"']+)"                                        # ?token=...
    r"|((?<=[Bb]earer )[^\s\"']+)")                                    # Authorization: Bearer ...
_FIELDS = ("event", "user_id", "conn_id", "ip", "status", "reason", "count", "code", "topic",
           "redis", "prefix", "error", "attempt", "topics", "reconnect", "streams")


def redact(text: str) -> str:
    return _SECRETS.sub("[redacted]", text)


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):     # the same record, at the next handler
            return True
        record._redacted = True
        try:
            message = record.getMessage()
        except Exception:       # a bad format string must not lose the line
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # One line serves every handler of the record (stdout and the log files).
        cached = getattr(record, "_json_line", None)
        if cached is not None:
            return cached
        fields = record.__dict__          # the record's attributes, `extra` included
        out = {
            "time": f"{self._second(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": fields.get("event") or "log",
            "message": record.getMessage(),
            "pid": record.process,
        }
        for name in _FIELDS[1:]:
            value = fields.get(name)
            if value is not None:
                out[name] = value
        if record.exc_text:
            out["exception"] = record.exc_text
        record._json_line = line = json_line(out)
        return line

    _last = (None, "")

    def _second(self, created: float) -> str:
        """`YYYY-MM-DDTHH:MM:SS` of a time, formatted once per second (records come in
        bursts: a reconnect storm logs two a connect)."""
        second = int(created)
        last, text = self._last
        if second != last:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._last = (second, text)
        return text


_SHORT_NAMES = {"gunicorn.error": "gunicorn", "gunicorn.access": "access"}


class TextFormatter(logging.Formatter):
    """A line for a developer's terminal: `14:30:01.123 warning app: message  user_id=u`
    (local time of day; the JSON lines in the files carry the full UTC time)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = _SHORT_NAMES.get(record.name) or record.name.removeprefix("fonana_realtime.")
        message = record.getMessage()
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname.lower():<7} {name}: {message}"
        extra = [f"{key}={fields[key]}" for key in _FIELDS if fields.get(key) not in (None, "", message)]
        if extra:
            line += "  " + " ".join(extra)
        if record.exc_text:
            line += "\n" + record.exc_text
        # The JSON lines' fields are written as given; here everything is one string anyway.
        return redact(line)


def console_format(log_format: str | None, production: bool, stream=None) -> str:
    """`text` or `json` for the console: LOG_FORMAT when set; else text for a person (the
    embedded default with stdout on a terminal), JSON for log collectors (production, or
    stdout redirected)."""
    if log_format:
        return log_format
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "text" if tty and not production else "json"


# json.dumps with arguments builds an encoder per call; this one is made once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, allow_nan=False)


def json_line(out: dict) -> str:
    """Standard JSON, always: NaN/Infinity (Python's default output) become strings, and a
    lone surrogate, which no UTF-8 log file can hold, is written escaped."""
    try:
        line = _ENCODER.encode(out)
        if not line.isascii():
            line.encode("utf-8")
        return line
    except ValueError:              # UnicodeEncodeError is one
        return json.dumps(_finite(out), default=str)      # ensure_ascii escapes surrogates


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# Every greenlet would otherwise get a dummy thread object per log record (our lines
# name the worker pid and connection id instead): a measurable share of a connect.
logging.logThreads = False
# Nor do they name the caller's file and line: without _srcfile, LogRecord skips the stack
# walk of findCaller (the logging HOWTO's "Optimization"), ~1 % of a connect in a storm.
logging._srcfile = None
logging.logMultiprocessing = False


class JsonLinesHandler(logging.Handler):
    """stdout and LOG_DIR's three files in one handler: a record is filtered (redacted)
    and formatted once, then written to each destination whose level it reaches.

    Why one handler: as four logging handlers (one per destination) every record paid
    four filter calls, four lock round trips and three flushes through logging's
    machinery: ~25 µs per record, a `connected` and a `disconnected` line per client,
    ~6 % of a connect in a reconnect storm (issue 11). The files are opened for append,
    so logrotate's copytruncate works as before (DEPLOY.md).
    """

    def __init__(self, log_dir: str | None = None, stream=None, console: str = "json"):
        super().__init__()
        # the console's own formatter when it shows text; None: the JSON line, like the files
        self.console_text = TextFormatter() if console == "text" else None
        self.outputs = [(stream if stream is not None else sys.stdout, logging.NOTSET, False)]
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            for name, level in FILES:
                self.outputs.append((open(os.path.join(log_dir, name), "a", encoding="utf-8"), level, True))

    _flush_pending = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.console_text
            if text is None:
                line = self.format(record) + "\n"
                for stream, level, _ in self.outputs:
                    if record.levelno >= level:
                        stream.write(line)
            else:
                self.outputs[0][0].write(text.format(record) + "\n")
                line = None
                for stream, level, _ in self.outputs[1:]:
                    if record.levelno >= level:
                        line = line or self.format(record) + "\n"
                        stream.write(line)
            # Flushed at the end of the worker's loop turn, once for every line the turn
            # wrote (turn_end; three write syscalls a record otherwise); errors, and every
            # line outside a gevent worker, at once.
            if record.levelno >= logging.ERROR:
                self.flush()
            elif not self._flush_pending:
                self._flush_pending = turn_end.later(self.flush)
                if not self._flush_pending:
                    self.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self._flush_pending = False
        for stream, _, _ in self.outputs:
            try:
                stream.flush()
            except (OSError, ValueError):      # a closed stream (at exit): nothing to lose
                pass

    def close(self) -> None:
        for stream, _, owned in self.outputs:
            if owned:
                try:
                    stream.close()
                except OSError:
                    pass
        self.outputs = self.outputs[:1]
        super().close()


FILES = (("ws-out.log", logging.INFO), ("ws-error.log", logging.ERROR), ("ws-combined.log", logging.DEBUG))


def logging_config(log_dir: str | None, level: str = "INFO", console: str = "json") -> dict:
    """A dictConfig for the app and for gunicorn's own loggers alike (`level`: LOG_LEVEL,
    `console`: `text` or `json`, see `console_format`)."""
    level = level.upper()
    handler = {"()": JsonLinesHandler, "log_dir": log_dir or None, "stream": "ext://sys.stdout",
               "console": console, "formatter": "json", "filters": ["redact"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactFilter}},
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json_lines": handler},
        "root": {"level": level, "handlers": ["json_lines"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["json_lines"], "propagate": False},
            "gunicorn.access": {"level": level, "handlers": ["json_lines"], "propagate": False},
        },
    }
