"""A backend's HTTP client: its requests Session, and a lean way to post through it.

The Session owns the keep-alive connections (one urllib3 connection pool per backend origin,
holding up to one connection per worker thread). Calls go straight to the Session's urllib3
pool: requests' per-call work (merging settings, a PreparedRequest, hooks, cookies, protocol
checks) was half of the gateway's CPU per call, and none of it is needed to forward a body we
already hold. No retries and no redirects: failing over is the proxy's job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

# No retries and no redirects, built once: urllib3 would build an equal Retry on every call.
NO_RETRIES = urllib3.Retry(total=False, redirect=False)

T = TypeVar("T")

# Targets longer than this (a client's long query string on an SDK path) are encoded on every
# call, so that the cache below stays small whatever clients send.
CACHED_CHARS = 512


def _remembered_when_short(work: Callable[[str], T], maxsize: int) -> Callable[[str], T]:
    """``work`` behind an lru_cache that only holds texts of up to :data:`CACHED_CHARS`."""
    cached = lru_cache(maxsize=maxsize)(work)

    def remembered(text: str) -> T:
        return cached(text) if len(text) <= CACHED_CHARS else work(text)

    remembered.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return remembered


def cache_target_encoding() -> None:
    """Remember urllib3's percent-encoding of request targets; idempotent.

    ``HTTPConnectionPool.urlopen`` re-encodes the target of every call with a Python loop over
    its bytes: about 9% of the instructions of a proxied call, for a result that only depends
    on the target, and the gateway sends few distinct targets (one per deployment and
    operation). urllib3 has no setting for it, so its module-level function is wrapped; what
    is sent does not change. tests/test_transport.py fails if an upgrade moves the function.
    """
    module = urllib3.connectionpool
    if getattr(module._encode_target, "cache_info", None) is None:
        module._encode_target = _remembered_when_short(module._encode_target, 1024)


def _split_url(url: str) -> tuple[str, str, str]:
    """scheme, netloc and request target of ``url``."""
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    return parts.scheme, parts.netloc, target


def make_session(max_connections: int) -> requests.Session:
    """A Session that can keep one connection per worker thread alive."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max_connections, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxy or netrc surprises from the environment
    return session


class BackendReply:
    """A backend's answer: status, headers, the raw stream, and close()."""

    __slots__ = ("headers", "raw", "status_code")

    def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
        self.raw = raw
        self.status_code = raw.status
        self.headers = raw.headers

    def close(self) -> None:
        """An unread connection is dropped, a fully read one goes back to the pool."""
        self.raw.close()
        self.raw.release_conn()


class Transport:
    """The Session of one backend, and its connection pools by origin."""

    def __init__(self, max_connections: int) -> None:
        cache_target_encoding()
        self.session = make_session(max_connections)
        # _lock guards _connections (written once per origin) and _closed
        self._connections: dict[tuple[str, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _connection_pool(self, url: str, scheme: str,
                         netloc: str) -> urllib3.HTTPConnectionPool:
        found = self._connections.get((scheme, netloc))
        if found is None:
            with self._lock:
                if self._closed:  # a call that started before close() is not re-pooled
                    raise urllib3.exceptions.ClosedPoolError(None, "the backend was removed")
                found = self.session.get_adapter(url).poolmanager.connection_from_url(url)
                self._connections[(scheme, netloc)] = found
        return found

    def post(self, url: str, body: bytes, headers: dict[str, str],
             timeout: urllib3.Timeout) -> BackendReply:
        """POST ``body``; the answer's body is left unread for the caller to stream."""
        scheme, netloc, target = _split_url(url)
        raw = self._connection_pool(url, scheme, netloc).urlopen(
            "POST", target, body=body, headers=headers, retries=NO_RETRIES, redirect=False,
            assert_same_host=False, preload_content=False, decode_content=False,
            timeout=timeout)
        return BackendReply(raw)

    def close(self) -> None:
        """Close every pooled connection: the pools this object holds, and the Session's."""
        with self._lock:
            self._closed = True
            pools, self._connections = list(self._connections.values()), {}
        for pool in pools:
            pool.close()
        self.session.close()
