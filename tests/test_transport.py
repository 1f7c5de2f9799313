"""The backend transport: what it sends is what urllib3 alone would send, caches included."""

from __future__ import annotations

import socket
import threading

import urllib3
import urllib3.connectionpool
from urllib3.util.url import _encode_target as urllib3_encode_target

from gateway_app.routing.transport import CACHED_CHARS, Transport

TIMEOUT = urllib3.Timeout(connect=2.0, read=5.0)


def post(transport: Transport, url: str) -> int:
    reply = transport.post(url, b"{}", {"content-type": "application/json"}, TIMEOUT)
    try:
        reply.raw.read()
        return reply.status_code
    finally:
        reply.close()


def test_urllib3_target_encoding_is_wrapped_with_a_cache():
    # An upgrade of urllib3 that moves or renames the function fails here, not silently.
    Transport(max_connections=1).close()
    assert hasattr(urllib3.connectionpool._encode_target, "cache_info")


def test_targets_are_encoded_as_urllib3_does_and_remembered(fake):
    backend = fake()
    transport = Transport(max_connections=2)
    encode = urllib3.connectionpool._encode_target
    target = "/openai/deployments/d%C3%A9p/chat completions?api-version=2024-10-21&x=a b|é"
    hits = encode.cache_info().hits
    assert [post(transport, backend.base + target) for _ in range(3)] == [200, 200, 200]
    assert encode.cache_info().hits >= hits + 2
    expected = urllib3_encode_target(target)
    assert "%20" in expected and "%C3%A9" in expected
    assert [r.path for r in backend.received] == [expected] * 3
    transport.close()


def test_long_targets_are_encoded_every_time_and_not_kept(fake):
    backend = fake()
    transport = Transport(max_connections=1)
    encode = urllib3.connectionpool._encode_target
    target = "/openai/deployments/d/embeddings?pad=" + "a b" * CACHED_CHARS
    size = encode.cache_info().currsize
    assert post(transport, backend.base + target) == 200
    assert encode.cache_info().currsize == size
    assert backend.received[0].path == urllib3_encode_target(target)
    transport.close()


def test_close_closes_the_pooled_connections():
    """A retired backend's kept-alive sockets are closed, not left to the garbage collector."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        transport = Transport(max_connections=1)
        port = listener.getsockname()[1]
        done: list[bytes] = []

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                request = b""
                while not request.endswith(b"\r\n\r\n{}"):  # the whole request: body "{}"
                    request += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                conn.settimeout(5)
                done.append(conn.recv(1))  # b"" once the client closes its end

        server = threading.Thread(target=serve)
        server.start()
        assert post(transport, f"http://127.0.0.1:{port}/x") == 200  # kept alive in the pool
        transport.close()
        server.join(10)
        assert done == [b""]
