"""Logging set-up: one line per record, as text (key=value fields) or JSON.

The per-call line (:func:`log_fields`) is the one record written for every call. It is built
by the same formatter as any other line but written straight to the handler, without a
LogRecord: in the threaded server, logging's record machinery cost about 5% of the gateway's
CPU per call. When the handler's stream is a file descriptor (stderr, normally), the line goes
out in one ``write()`` without the handler's lock; see :meth:`LineHandler.write_line`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import select
import sys
import time
from typing import Any, TextIO

Fields = dict[str, Any]


def _fields(record: logging.LogRecord) -> Fields:
    return getattr(record, "fields", None) or {}


class _SecondCache:
    """``time.strftime`` of the current second, made once a second."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime(self.fmt, time.localtime(created))
            self._second = (second, text)
        return text


class LineFormatter(logging.Formatter):
    """A formatter that can also build a line from its parts, for :func:`log_fields`."""

    def line(self, created: float, level: int, name: str, message: str, fields: Fields) -> str:
        raise NotImplementedError

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record.created, record.levelno, record.name, record.getMessage(),
                         _fields(record))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class TextFormatter(LineFormatter):
    """``time LEVEL logger message key=value ...`` for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__()
        self._time = _SecondCache(self.default_time_format)

    def line(self, created: float, level: int, name: str, message: str, fields: Fields) -> str:
        stamp = self.default_msec_format % (self._time(created), (created % 1) * 1000)
        line = f"{stamp} {logging.getLevelName(level)} {name} {message}"
        if fields:
            line += " " + " ".join([f"{k}={v}" for k, v in fields.items()])
        return line


class JsonFormatter(LineFormatter):
    """One JSON object per line for log collectors; structured fields become keys."""

    def __init__(self) -> None:
        super().__init__()
        self._time = _SecondCache("%Y-%m-%dT%H:%M:%S%z")

    def line(self, created: float, level: int, name: str, message: str, fields: Fields) -> str:
        return json.dumps({"time": self._time(created),
                           "level": logging.getLevelName(level).lower(), "logger": name,
                           "message": message, **fields})

    def format(self, record: logging.LogRecord) -> str:
        if not record.exc_info:
            return super().format(record)
        fields = {**_fields(record), "exception": self.formatException(record.exc_info)}
        return self.line(record.created, record.levelno, record.name, record.getMessage(),
                         fields)


# Linux writes up to this many bytes to a pipe in one piece, and serialises writes to a file.
ATOMIC_WRITE_BYTES = getattr(select, "PIPE_BUF", 512)


def _descriptor(stream: TextIO) -> tuple[int, str] | None:
    """The file descriptor under ``stream`` and its encoding, or None (a StringIO, say)."""
    try:
        return stream.fileno(), getattr(stream, "encoding", None) or "utf-8"
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


class LineHandler(logging.StreamHandler):
    """A StreamHandler that also writes lines built elsewhere."""

    _described: tuple[TextIO | None, tuple[int, str] | None] = (None, None)

    def write_line(self, line: str) -> None:
        """Write one line; it never raises into the call.

        On a file descriptor, a line of up to :data:`ATOMIC_WRITE_BYTES` is one ``write()``
        without the handler's lock. The kernel keeps such a write whole against other
        threads' (a pipe up to PIPE_BUF, a file always), and the handler flushes its stream
        after every record, so lines never mix. Holding the lock across the system call made
        busy threads queue on it: with 256 connections most per-call lines waited, and the
        lock-free write took 0.02-0.05 ms off the CPU per call at 16 to 256 connections.
        """
        stream = self.stream
        described, descriptor = self._described
        if described is not stream:
            descriptor = _descriptor(stream)
            self._described = (stream, descriptor)
        try:
            if descriptor is not None:
                data = (line + "\n").encode(descriptor[1], "backslashreplace")
                if len(data) <= ATOMIC_WRITE_BYTES:
                    while data:
                        data = data[os.write(descriptor[0], data):]
                    return
            with self.lock:  # type: ignore[union-attr]
                stream.write(line + self.terminator)
                self.flush()
        except Exception:  # as logging does: a broken stream must not fail the call
            if logging.raiseExceptions:
                with contextlib.suppress(Exception):
                    sys.stderr.write("apirouter: could not write a log line\n")


_handler: LineHandler | None = None


def log_fields(logger: logging.Logger, level: int, message: str, fields: Fields) -> None:
    """Log ``message`` with structured ``fields`` at ``level``.

    When our handler is the one that would write it, the line goes straight to it; otherwise
    (logging configured by someone else) through ``logger`` as an ordinary record.
    """
    if not logger.isEnabledFor(level):
        return
    handler = _handler
    formatter = handler.formatter if handler is not None else None
    if not isinstance(formatter, LineFormatter) or logger.handlers or logger.parent is None \
            or logger.parent.handlers != [handler]:
        logger.log(level, message, extra={"fields": fields})
        return
    handler.write_line(formatter.line(time.time(), level, logger.name, message, fields))


def configure_logging(level: int, fmt: str) -> None:
    """Send our loggers and waitress's to stderr at ``level``; idempotent."""
    global _handler
    # The logging HOWTO's "Optimization" settings: our lines show no caller, thread or
    # process, so logging need not look them up for every record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in ("apirouter", "waitress"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level if name == "apirouter" else max(level, logging.INFO))
        logger.propagate = False
    _handler = handler
