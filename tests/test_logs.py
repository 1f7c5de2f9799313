"""The log handler's direct line writes: whole lines from many threads, never an exception."""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading

from gateway_app.logs import ATOMIC_WRITE_BYTES, LineHandler

THREADS = 16
LINES = 200


class Pipe:
    """A LineHandler writing into a pipe, and a thread reading everything out of it."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.handler = LineHandler(os.fdopen(write_fd, "w", encoding="utf-8"))
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, args=(read_fd,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb", buffering=0) as source:
            self._chunks.extend(iter(lambda: source.read(65536), b""))

    def lines(self) -> list[bytes]:
        """Close the writing end and return what was read, line by line."""
        self.handler.stream.close()
        self._reader.join(timeout=10)
        assert not self._reader.is_alive()
        return b"".join(self._chunks).split(b"\n")


def line_of(thread: int, number: int) -> str:
    # lengths vary up to near the atomic size, so writes straddle the pipe's buffer
    return f"t={thread} n={number} " + "x" * ((thread * 997 + number * 131) % 3900)


def test_lines_from_many_threads_stay_whole():
    pipe = Pipe()

    def write(thread: int) -> None:
        for number in range(LINES):
            pipe.handler.write_line(line_of(thread, number))

    workers = [threading.Thread(target=write, args=(t,)) for t in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    *lines, last = pipe.lines()
    assert last == b""  # every line ended with its newline
    seen = sorted(lines)
    assert seen == sorted(line_of(t, n).encode() for t in range(THREADS) for n in range(LINES))
    for thread in range(THREADS):  # and each thread's lines came out in its order
        mine = [line for line in lines if line.startswith(f"t={thread} ".encode())]
        assert [int(re.match(rb"t=\d+ n=(\d+)", m).group(1)) for m in mine] == list(range(LINES))


def test_a_line_to_a_descriptor_does_not_wait_for_the_handler_lock():
    pipe = Pipe()
    done = threading.Event()
    with pipe.handler.lock:  # as when another thread writes a record through logging
        writer = threading.Thread(target=lambda: (pipe.handler.write_line("quick"), done.set()))
        writer.start()
        assert done.wait(5), "the short line waited for the handler's lock"
    writer.join(timeout=5)
    assert pipe.lines() == [b"quick", b""]


def test_long_lines_and_streams_without_a_descriptor_are_written_too():
    stream = io.StringIO()
    handler = LineHandler(stream)
    long_line = "y" * (ATOMIC_WRITE_BYTES * 3)
    handler.write_line("short")
    handler.write_line(long_line)
    assert stream.getvalue().splitlines() == ["short", long_line]
    pipe = Pipe()
    pipe.handler.write_line(long_line)
    assert pipe.lines() == [long_line.encode(), b""]


def test_a_broken_stream_never_raises(capsys):
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # writes now fail with EPIPE
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    handler = LineHandler(stream)
    handler.write_line("lost")
    handler.write_line("z" * (ATOMIC_WRITE_BYTES * 2))
    assert capsys.readouterr().err.count("apirouter: could not write a log line") == 2
    with contextlib.suppress(OSError):
        stream.close()


def test_non_ascii_is_written_in_the_streams_encoding(tmp_path):
    path = tmp_path / "log.txt"
    with path.open("w", encoding="utf-8") as stream:
        LineHandler(stream).write_line("client=café")
    assert path.read_text(encoding="utf-8") == "client=café\n"
