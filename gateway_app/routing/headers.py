"""Which headers cross the gateway, in each direction."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

# RFC 9110 section 7.6.1, plus the ones the server recomputes for the relayed body.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
NOT_RELAYED = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server", "set-cookie",
                            "x-request-id"}
# Client headers worth passing on; everything else (api-key, Authorization, cookies) stays here.
FORWARDED = ("accept", "x-ms-client-request-id", "openai-organization", "openai-beta")
# ...and where the WSGI environ holds them (read there: one dict lookup each per call)
_FORWARDED_KEYS = tuple(("HTTP_" + name.upper().replace("-", "_"), name) for name in FORWARDED)
REQUEST_ID_KEY = "HTTP_X_REQUEST_ID"

REQUEST_ID = "x-request-id"
ENDPOINT_HEADER = "x-apirouter-endpoint"
ATTEMPTS_HEADER = "x-apirouter-attempts"
_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id(client_value: str | None) -> str:
    """Keep the client's request id when it is sane, else make one."""
    if client_value and _ID_PATTERN.fullmatch(client_value):
        return client_value
    # 32 hex digits like uuid4().hex; an identifier, not a secret, so no system call for it
    return f"{random.getrandbits(128):032x}"


def forwarded_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The client's headers worth passing on (:data:`FORWARDED`), from the WSGI environ."""
    return {name: environ[key] for key, name in _FORWARDED_KEYS if key in environ}


def backend_headers(forwarded: Mapping[str, str], api_key: str, rid: str,
                    content_type: str | None = None) -> dict[str, str]:
    """Headers for a backend: its key, our request id and the client's ``forwarded`` ones."""
    headers = {"content-type": content_type or "application/json",
               "accept-encoding": "identity",
               "api-key": api_key, REQUEST_ID: rid}
    headers.update(forwarded)
    return headers


def client_headers(backend: Iterable[tuple[str, str]], rid: str, priority: int,
                   attempts: int) -> list[tuple[str, str]]:
    """The backend's answer headers a client should see, plus our tracing headers."""
    headers = [(k, v) for k, v in backend if k.lower() not in NOT_RELAYED]
    headers += [(REQUEST_ID, rid), (ENDPOINT_HEADER, str(priority)),
                (ATTEMPTS_HEADER, str(attempts))]
    return headers
