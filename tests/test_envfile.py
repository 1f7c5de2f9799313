"""Env files read by the rules of ``docker run --env-file``, and .env.sample kept in step."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import MISSING, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway_app.envfile import EnvFileError, load_env_files, parse_env_file, read_env_file
from gateway_app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-value-9a7b"


def parse(text: str, **environ: str) -> dict[str, str]:
    return parse_env_file(text, environ)


def test_one_variable_per_line():
    assert parse("A=1\nB=two words\n") == {"A": "1", "B": "two words"}


@pytest.mark.parametrize("line, value", [
    ('A="quoted"', '"quoted"'),           # no quote processing
    ("A='single'", "'single'"),
    ("A=$HOME/x", "$HOME/x"),             # no expansion
    ("A=${B:-c}", "${B:-c}"),
    ("A=x=y", "x=y"),                     # split at the first '=' only
    ("A=v # not a comment", "v # not a comment"),
    ("A=  padded  ", "  padded  "),       # the value keeps its whitespace
    ("A=", ""),
])
def test_the_value_is_taken_as_written(line, value):
    assert parse(line + "\n", A="from-env", B="b") == {"A": value}


def test_comments_and_blank_lines_are_skipped():
    text = "# a comment\n\n   \n\t# indented comment\nA=1\n#B=2\n"
    assert parse(text) == {"A": "1"}


def test_leading_whitespace_of_a_line_is_dropped():
    # spaces, tabs and other Unicode spaces, as Go's unicode.IsSpace; not U+001F
    assert parse("  A=1\n\tB=2\n\u00a0\u2003C=3\n") == {"A": "1", "B": "2", "C": "3"}
    with pytest.raises(EnvFileError, match="line 1: a variable name must not contain"):
        parse("\x1f A=1\n")


def test_a_bare_name_is_taken_from_the_environment_when_set():
    assert parse("A\nB\nC\n", A="from-env", C="") == {"A": "from-env", "C": ""}


@pytest.mark.parametrize("text, line", [
    ("A =1\n", 1), ("A B=1\n", 1), ("A\tB\n", 1), ("A \n", 1),
    (f"OK=1\n{SECRET} in a line\n", 2),
])
def test_a_name_with_whitespace_is_refused_without_showing_the_line(text, line):
    with pytest.raises(EnvFileError) as caught:
        parse(text)
    assert str(caught.value) == (
        f"env file line {line}: a variable name must not contain spaces or tabs")


def test_an_empty_name_is_refused():
    with pytest.raises(EnvFileError, match=r"^env file line 2: no variable name before '='$"):
        parse(f"A=1\n={SECRET}\n")


def test_bom_crlf_and_a_last_line_without_newline():
    assert parse("\ufeffA=1\r\nB=2\r\nC=3") == {"A": "1", "B": "2", "C": "3"}
    # a byte-order mark is dropped at the start of the file only
    assert parse("A=1\n\ufeffB=2\n") == {"A": "1", "\ufeffB": "2"}


def test_the_last_of_a_repeated_name_wins():
    assert parse("A=1\nA=2\n") == {"A": "2"}


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(EnvFileError, match=r"^cannot read env file .*nope: No such file"):
        read_env_file(tmp_path / "nope", {})
    with pytest.raises(EnvFileError, match=r"^cannot read env file .*: Is a directory$"):
        read_env_file(tmp_path, {})


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    path = tmp_path / "e"
    path.write_bytes(b"A=1\nB=caf\xe9 " + SECRET.encode() + b"\n")
    with pytest.raises(EnvFileError) as caught:
        read_env_file(path, {})
    assert str(caught.value) == f"env file {path} line 2: not UTF-8"


def test_the_environment_wins_over_files_and_a_later_file_over_an_earlier_one(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("A=first\nB=first\nC=first\n")
    second.write_text("B=second\nD\n")
    environ = {"C": "env", "D": "env-d"}
    added = load_env_files([first, second], environ)
    assert environ == {"A": "first", "B": "second", "C": "env", "D": "env-d"}
    assert added == ["A", "B"]


# --- the docker CLI itself, when it is installed --------------------------------------------

class FakeDockerDaemon(BaseHTTPRequestHandler):
    """Just enough of the Engine API for ``docker create``: records the Env it is sent."""

    created: list[list[str]]

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Api-Version", "1.43")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self._answer(200)

    def do_GET(self) -> None:  # /_ping
        self._answer(200, b"OK")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "/containers/create" not in self.path:
            self._answer(404, b'{"message": "not faked"}')
            return
        self.created.append(json.loads(body).get("Env") or [])
        self._answer(201, b'{"Id": "0123456789ab", "Warnings": []}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def docker_create(tmp_path: Path) -> Iterator:
    """Runs ``docker create --env-file FILE`` against a fake daemon on 127.0.0.1 and returns
    the environment the docker CLI built from FILE (it parses the file itself)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI to compare with")
    created: list[list[str]] = []
    handler = type("Daemon", (FakeDockerDaemon,), {"created": created})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def create(path: Path, **environ: str) -> dict[str, str] | None:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               "DOCKER_CONFIG": str(tmp_path / "docker"),
               "DOCKER_HOST": f"tcp://127.0.0.1:{server.server_address[1]}", **environ}
        done = subprocess.run([docker, "create", "--env-file", str(path), "busybox"], env=env,
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            return None
        return dict(entry.split("=", 1) for entry in created.pop())

    yield create
    server.shutdown()
    server.server_close()


DOCKER_CASES = [
    b'A=1\n  B="q" \nC=$HOME\nD=x # y\n\tE\nF\nG=a=b\r\n# c\n \t\n\xc2\xa0H=nbsp\nA=2',
    b"\xef\xbb\xbfA=bom\nB=\n\xef\xbb\xbfC=bom-not-first\n",
    b"A B=1\n", b"=x\n", b"A =1\n", b"A \n", b"\x1f A=1\n", b"A=caf\xe9\n",
]


@pytest.mark.parametrize("content", DOCKER_CASES)
def test_the_same_variables_as_the_docker_cli(docker_create, tmp_path, content):
    path = tmp_path / "case.env"
    path.write_bytes(content)
    environ = {"E": "from-env"}
    try:
        ours: dict[str, str] | None = read_env_file(path, environ)
    except EnvFileError:
        ours = None  # docker refuses the file too
    assert docker_create(path, **environ) == ours


# --- .env.sample --------------------------------------------------------------------------

SAMPLE = ROOT / ".env.sample"
# "VAR=value", "VAR" (from the environment) or, for an optional one, "# VAR=default"
ENTRY = re.compile(r"^(?P<off># )?(?P<name>[A-Z][A-Z0-9_]*)(?:=(?P<value>.*))?$")


def sample_entries() -> list[tuple[str, bool, str | None, str]]:
    """(name, commented out, value or None, the comment above it) for each variable line."""
    entries, comment = [], []
    for line in SAMPLE.read_text().splitlines():
        match = ENTRY.match(line)
        if match and (match["value"] is not None or not match["off"]):
            entries.append((match["name"], bool(match["off"]), match["value"],
                            " ".join(comment)))
            comment = []
        elif line.startswith("#"):
            comment.append(line)
        else:
            comment = []
    return entries


def test_the_sample_lists_exactly_the_settings_in_their_order():
    assert [name for name, *_ in sample_entries()] == [v for v, _f, _d in Settings.variables()]


def test_the_sample_marks_required_ones_and_shows_the_defaults():
    by_name = {f.metadata["env"]: f for f in fields(Settings) if "env" in f.metadata}
    for name, off, value, comment in sample_entries():
        f = by_name[name]
        if f.default is MISSING:
            assert not off and "REQUIRED" in comment, name
        else:
            assert off and "REQUIRED" not in comment, name
            assert f.metadata["convert"](value) == f.default, name
            assert "Default" in comment, name


def test_the_sample_starts_a_gateway_once_the_key_is_exported():
    values = read_env_file(SAMPLE, {"API_GATEWAY_KEY": SECRET})
    settings = Settings.from_env(values)
    assert settings.gateway_key == SECRET and settings.unknown_names == ()
    assert (settings.name, settings.env, settings.threads) == ("gw-1", "dev", 512)
    assert "API_GATEWAY_KEY" not in read_env_file(SAMPLE, {})
