"""A backend's HTTP client: its requests Session, and a lean way to post through it.

The Session owns the pooled keep-alive connections (one pool per backend origin, sized to the
thread count). Calls go straight to the Session's urllib3 pool: requests' per-call work
(merging settings, a PreparedRequest, hooks, cookies, protocol checks) was half of the
gateway's CPU per call, and none of it is needed to forward a body we already hold. No retries
and no redirects: failing over is the proxy's job.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

# No retries and no redirects, built once: urllib3 would build an equal Retry on every call.
NO_RETRIES = urllib3.Retry(total=False, redirect=False)


@lru_cache(maxsize=512)
def _split(url: str) -> tuple[str, str, str]:
    """scheme, netloc and request target of ``url`` (the /lb ones repeat on every call)."""
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    return parts.scheme, parts.netloc, target


@lru_cache(maxsize=64)
def _timeout(connect: float, read: float) -> urllib3.Timeout:
    """urllib3 clones the Timeout it is given, so one per value pair can be shared."""
    return urllib3.Timeout(connect=connect, read=read)


def make_session(pool_size: int) -> requests.Session:
    """A Session whose pool can keep one connection per worker thread alive."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxy or netrc surprises from the environment
    return session


class Reply:
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

    def __init__(self, pool_size: int) -> None:
        self.session = make_session(pool_size)
        self._pools: dict[tuple[str, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def _pool(self, url: str, scheme: str, netloc: str) -> urllib3.HTTPConnectionPool:
        pool = self._pools.get((scheme, netloc))
        if pool is None:
            with self._lock:
                pool = self.session.get_adapter(url).poolmanager.connection_from_url(url)
                self._pools[(scheme, netloc)] = pool
        return pool

    def post(self, url: str, body: bytes, headers: dict[str, str],
             timeout: tuple[float, float]) -> Reply:
        """POST ``body``; the answer's body is left unread for the caller to stream."""
        scheme, netloc, target = _split(url)
        raw = self._pool(url, scheme, netloc).urlopen(
            "POST", target, body=body, headers=headers, retries=NO_RETRIES, redirect=False,
            assert_same_host=False, preload_content=False, decode_content=False,
            timeout=_timeout(*timeout))
        return Reply(raw)

    def close(self) -> None:
        self.session.close()
