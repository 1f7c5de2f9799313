"""A collector sink that appends every closed metrics interval to a JSON-lines file.

The history in memory is bounded by API_GATEWAY_METRICS_CHISTORY and lost on restart; this
file keeps it for capacity planning (``python -m gateway_app.capacity --history FILE``). One
line per endpoint and interval: the sink's entry (endpoint, priority, collectionTime,
collectedMetrics) plus instanceName, source (the pod or host, so the report can add up several
pods' files window by window) and intervalMinutes, so a line stands on its own. The entry's
collectedMetrics carries, beside the original's fields, tokenSplit and perMinute (the
interval's figures per minute bucket, and the pool's served and unmet demand).

It runs on the collector thread, never on a call's. An I/O error is logged once (and once
more when writing works again), never raised: capacity data is not worth failing over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from ..settings import Settings

log = logging.getLogger("apirouter")


class HistoryFile:
    """Appends closed intervals to ``path``; past ``max_bytes`` it moves it to ``path.1``."""

    def __init__(self, path: str, instance: str, interval_minutes: float,
                 max_bytes: int = 0, source: str = "") -> None:
        self.path = path
        self.instance = instance
        self.source = source or socket.gethostname()
        self.interval_minutes = interval_minutes
        self.max_bytes = max_bytes
        self.failing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> HistoryFile:
        return cls(settings.metrics_history_file, settings.name,
                   settings.metrics_interval_minutes, settings.metrics_history_file_max_bytes,
                   source=settings.pod_name)

    def line(self, entry: Mapping[str, Any]) -> str:
        record = {"instanceName": self.instance, "source": self.source,
                  "intervalMinutes": self.interval_minutes, **entry}
        return json.dumps(record, separators=(",", ":")) + "\n"

    def __call__(self, entries: Sequence[Mapping[str, Any]]) -> None:
        if not entries:
            return
        text = "".join(self.line(e) for e in entries)
        try:
            self._rotate(len(text))
            # Opened for each closing (once an interval), so a file moved away by logrotate
            # or deleted by an operator is simply started again.
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            if not self.failing:
                self.failing = True
                log.error("cannot append the metrics history to %s (%s); intervals are kept "
                          "in memory only until it works again", self.path,
                          exc.strerror or exc)
            return
        if self.failing:
            self.failing = False
            log.warning("the metrics history is written to %s again", self.path)

    def _rotate(self, adding: int) -> None:
        if not self.max_bytes:
            return
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            return
        if size and size + adding > self.max_bytes:
            os.replace(self.path, self.path + ".1")
