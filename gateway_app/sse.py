"""Server-sent events: split a relayed byte stream into whole events, read token usage."""

from __future__ import annotations

import re
from collections.abc import Iterator

_TOTAL_TOKENS = re.compile(rb'"total_tokens"\s*:\s*(\d+)')
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def total_tokens(payload: bytes) -> int | None:
    """``usage.total_tokens`` of an OpenAI JSON answer or stream event, without decoding it.

    A quote inside a JSON string is escaped, so the pattern only matches a real key; the last
    match wins because usage comes after the choices.
    """
    found = None
    for found in _TOTAL_TOKENS.finditer(payload):  # noqa: B007 - we want the last one
        pass
    return int(found.group(1)) if found else None


class EventSplitter:
    """Feed bytes as they arrive; get back each complete event (with its blank line)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        buffer = self._pending + data if self._pending else data
        start = 0
        for match in _EVENT_END.finditer(buffer):
            yield buffer[start:match.end()]
            start = match.end()
        self._pending = buffer[start:]

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._pending


def is_usage_only(event: bytes) -> bool:
    """The extra chunk that ``stream_options.include_usage`` adds: no choices, only usage."""
    return b'"choices":[]' in event.replace(b" ", b"") and b'"usage"' in event
