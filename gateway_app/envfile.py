"""Env files read as ``docker run --env-file`` reads them, for ``python wsgi.py --env-file``.

One file then serves ``python wsgi.py``, ``scripts/start-container.sh`` and docker or podman
alike. The rules are those of the docker CLI (its ``pkg/kvfile``):

- one ``VAR=VALUE`` per line; the value is everything after the first ``=``, as it is: quotes
  are part of it, ``$OTHER`` is not expanded, trailing whitespace is kept;
- leading whitespace of a line is dropped; blank lines and lines starting with ``#`` are
  skipped (a ``#`` later in a line is part of the value);
- a line with only ``VAR`` takes VAR from the environment, and is skipped when it is not set;
- a name must not be empty or contain a space or a tab;
- the file is UTF-8; a byte-order mark at its start is dropped; a CR before each LF is dropped;
- when a name is given twice, the last line wins.

Error messages name the file and the line, never the line's text: it may hold a key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping, Sequence

_BOM = "\ufeff"
# Go's unicode.IsSpace, which docker trims with, is Python's isspace() without the four
# separator controls U+001C..U+001F.
_NOT_GO_SPACE = frozenset("\x1c\x1d\x1e\x1f")


class EnvFileError(ValueError):
    """An env file cannot be read or breaks a rule; the message names the file and line."""


def _strip_leading_space(line: str) -> str:
    for i, ch in enumerate(line):
        if not ch.isspace() or ch in _NOT_GO_SPACE:
            return line[i:]
    return ""


def parse_env_file(text: str, environ: Mapping[str, str], source: str = "env file"
                   ) -> dict[str, str]:
    """The variables ``text`` sets, in file order; pass-through lines look in ``environ``."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if number == 1:
            line = line.removeprefix(_BOM)
        line = _strip_leading_space(line)
        if not line or line.startswith("#"):
            continue
        name, has_value, value = line.partition("=")
        if not name:
            raise EnvFileError(f"{source} line {number}: no variable name before '='")
        if " " in name or "\t" in name:
            raise EnvFileError(f"{source} line {number}: a variable name must not contain "
                               "spaces or tabs")
        if has_value:
            found[name] = value
        elif name in environ:
            found[name] = environ[name]
    return found


def read_env_file(path: str | os.PathLike[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the env file at ``path`` sets; EnvFileError when it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise EnvFileError(f"cannot read env file {os.fspath(path)}: "
                           f"{exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise EnvFileError(f"env file {os.fspath(path)} line {line}: not UTF-8") from None
    return parse_env_file(text, environ, f"env file {os.fspath(path)}")


def load_env_files(paths: Sequence[str | os.PathLike[str]], environ: MutableMapping[str, str]
                   ) -> list[str]:
    """Add the variables of ``paths`` to ``environ``; returns the names added.

    A later file wins over an earlier one, as with several ``--env-file`` options of docker,
    and a variable already in ``environ`` wins over every file, as ``--env`` does.
    """
    merged: dict[str, str] = {}
    for path in paths:
        merged.update(read_env_file(path, environ))
    added = [name for name in merged if name not in environ]
    for name in added:
        environ[name] = merged[name]
    return added
