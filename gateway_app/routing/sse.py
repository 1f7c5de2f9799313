"""Server-sent events: split a relayed byte stream into whole events, read token usage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

_USAGE_FIELD = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)"\s*:\s*(\d+)')
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class Usage(NamedTuple):
    prompt: int
    completion: int
    total: int


def usage_of(payload: bytes) -> Usage | None:
    """``usage`` of an OpenAI JSON answer or stream event, read without decoding the JSON.

    A quote inside a JSON string is escaped, so the pattern only matches real keys; later
    matches win because usage comes after the choices. The search starts at the last
    ``"usage"`` key, which spares scanning the answer's text; if that finds nothing (the word
    was a string value after the real key), the whole payload is scanned.
    """
    start = payload.rfind(b'"usage"')
    found = _usage_fields(payload, max(start, 0))
    if b"total_tokens" not in found and start > 0:
        found = _usage_fields(payload, 0)
    if b"total_tokens" not in found:
        return None
    prompt = found.get(b"prompt_tokens", 0)
    total = found[b"total_tokens"]
    return Usage(prompt, found.get(b"completion_tokens", max(0, total - prompt)), total)


def _usage_fields(payload: bytes, start: int) -> dict[bytes, int]:
    return {m.group(1): int(m.group(2)) for m in _USAGE_FIELD.finditer(payload, start)}


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
    def pending(self) -> int:
        """Bytes held back waiting for the end of their event."""
        return len(self._pending)


def is_usage_only(event: bytes) -> bool:
    """The extra chunk that ``stream_options.include_usage`` adds: no choices, only usage."""
    return b'"choices":[]' in event.replace(b" ", b"") and b'"usage"' in event
