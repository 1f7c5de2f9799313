"""Client authentication of the web layer: which key a request presents, and which routes are open.

Routes that need no client key are marked where they are defined, with :func:`open_route`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

F = TypeVar("F", bound=Callable)

OPEN_ATTRIBUTE = "apirouter_open"


def open_route(view: F) -> F:
    """Mark a view that answers without a client key (probes; the dashboard's static page)."""
    setattr(view, OPEN_ATTRIBUTE, True)
    return view


def is_open(view: Callable | None) -> bool:
    return getattr(view, OPEN_ATTRIBUTE, False)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: ``api-key``, else ``Authorization: Bearer <key>``."""
    key = headers.get("api-key")
    if key:
        return key.strip()
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
