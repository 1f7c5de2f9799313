"""What replicas tell each other through Redis, one class per kind.

Every message names its origin (the replica that sent it, so it can ignore its own) and is
JSON on the wire. A kind of *soft state* (a cooldown; later a headroom reading) also names a
Redis hash, a field in it and an end time: the link keeps the latest such message per field
in that hash, so a replica that starts or reconnects later reads what is still running.
Adding a kind is one class here and one handler given to the link. A replica that receives
a kind it does not know (a newer replica, during a rolling upgrade) ignores it.

Nothing here may carry a key: deployment URLs, pool and replica names, numbers, digests.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

KINDS: dict[str, type[Message]] = {}


@dataclass(frozen=True)
class Message:
    """The envelope every kind shares."""

    kind: ClassVar[str] = ""
    # the hash soft state of this kind is kept in (a suffix of the key prefix); None: an event
    state_hash: ClassVar[str | None] = None

    origin: str  # the replica that sent it

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        KINDS[cls.kind] = cls

    def encode(self) -> str:
        return json.dumps({"kind": self.kind, **asdict(self)}, separators=(",", ":"))

    # soft state: the field of state_hash this message is kept under, and until when
    def state_field(self) -> str:
        raise NotImplementedError

    def expires(self) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class Cooldown(Message):
    """A backend (one deployment) entered a cooldown on the origin replica."""

    kind: ClassVar[str] = "cooldown"
    state_hash: ClassVar[str | None] = "cooldowns"

    backend: str  # the deployment's URL (Backend.id)
    until: float  # wall-clock epoch at which the cooldown ends
    reason: str  # "throttled" or "failed"
    streak: int  # faults in a row on the origin
    at: float  # wall-clock epoch when it was entered, to measure propagation

    def state_field(self) -> str:
        return self.backend

    def expires(self) -> float:
        return self.until


@dataclass(frozen=True)
class Reading(Message):
    """A backend's remaining budget as an answer on the origin replica stated it (headroom
    routing); kept until it stops being trusted."""

    kind: ClassVar[str] = "reading"
    state_hash: ClassVar[str | None] = "readings"

    backend: str  # the deployment's URL (Backend.id)
    requests: int | None
    tokens: int | None
    utilization: float | None
    read_at: float  # wall-clock epoch at which the answer arrived
    as_of: float  # wall-clock epoch at which the call it answered was sent
    until: float  # wall-clock epoch after which it is not trusted

    def state_field(self) -> str:
        return self.backend

    def expires(self) -> float:
        return self.until


@dataclass(frozen=True)
class ReloadRequest(Message):
    """Re-read your own configuration file (someone reloaded the origin's)."""

    kind: ClassVar[str] = "reload"

    request: str  # an id the answers name


@dataclass(frozen=True)
class ReloadAnswer(Message):
    """How a replica's reload for a request went."""

    kind: ClassVar[str] = "reload-answer"

    request: str
    applied: bool
    version: str  # the configuration version it runs now (the old one when not applied)
    error: str = ""  # why not: ConfigError's text, which names fields, never a key


@dataclass(frozen=True)
class ClientUsageDeltas(Message):
    """What the origin's clients were admitted and settled since its last such message, so
    that every replica counts every replica's calls against each client's limits. Each delta
    is ``[client name, admitted at (epoch), tokens, requests, quota period start or null]``
    (usage.py); a settlement is the change of its call's tokens, with 0 requests."""

    kind: ClassVar[str] = "client-usage"

    deltas: list[list[Any]]


def decode(text: str | bytes) -> Message | None:
    """The message in ``text``; None for a kind this replica does not know or a malformed
    one (logged by the caller)."""
    data = json.loads(text)
    cls = KINDS.get(data.get("kind", "")) if isinstance(data, dict) else None
    if cls is None:
        return None
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
