"""The configuration version: a digest that changes with the file's content, never a key.

It is what replicas show each other (and /instanceinfo shows) to tell which file each runs.
Key fields are removed before hashing, so the digest cannot be used to test guesses of a key;
a rotated key therefore keeps the version (the keys are not part of what replicas compare).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that hold secrets in the configuration file (config.py), at any depth.
SECRET_FIELDS = frozenset({"apikey", "key", "api_key", "apiKey", "password", "secret", "token"})


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_secrets(v) for k, v in value.items() if k not in SECRET_FIELDS}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def document_version(document: Any) -> str:
    """sha256 of the decoded document without its key fields, canonically encoded; 16 hex
    digits are plenty to tell versions apart."""
    canonical = json.dumps(_without_secrets(document), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_version(path: str) -> str:
    """The version of the file at ``path``; "unreadable" or "invalid-json" when it has none."""
    try:
        with open(path, "rb") as handle:
            return document_version(json.loads(handle.read()))
    except OSError:
        return "unreadable"
    except ValueError:
        return "invalid-json"
