"""Reload the configuration when its file changes (a mounted ConfigMap is updated in place)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable

from .config import ConfigError

log = logging.getLogger("apirouter")


def file_digest(path: str) -> str | None:
    """SHA-256 of the file's bytes, or None while it cannot be read (mid-swap)."""
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Polls the file every ``interval`` seconds and reloads when its content changes.

    Content, not modification time, is compared: Kubernetes swaps a symlink, which leaves
    times unreliable. A file that fails validation is reported once and the old
    configuration keeps serving, exactly as with the reconfig route.
    """

    def __init__(self, path: str, interval: float, reload: Callable[[], int]) -> None:
        self.path = path
        self.interval = interval
        self.reload = reload
        self._seen = file_digest(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def note_reloaded(self) -> None:
        """The file was just read by another path (a reload asked elsewhere): its content
        is not a change to act on again."""
        self._seen = file_digest(self.path)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            digest = file_digest(self.path)
            if digest is None or digest == self._seen:
                continue
            self._seen = digest
            try:
                count = self.reload()
            except ConfigError as exc:
                log.error("configuration file changed but is invalid, keeping the old one: %s",
                          exc)
            except Exception:  # the watch must go on whatever a reload raises
                log.exception("reloading the changed configuration failed")
            else:
                log.info("configuration file changed: reloaded %d endpoint(s)", count)
