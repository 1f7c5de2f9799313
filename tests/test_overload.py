"""Staying up under overload (issue 17): the admin listener, admission control, deadlines for
slow clients and JSON for every over-limit body. Real waitress servers on 127.0.0.1; every
slow client and every load is bounded in count and time."""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from gateway_app.admission import Admission, admission_limit
from gateway_app.settings import MIB, Settings, SettingsError
from tests.conftest import GATEWAY_KEY, RunningGateway, base_env
from tests.fakes import DONE_EVENT, FakeBackend, chunk, reply, sse_event, stream, wait_until
from tests.test_serving import _refused, free_port, wsgi_process

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
PREFIX = "/api/v1/test/apirouter"


def admin_url(gw: RunningGateway) -> str:
    address = gw.server.admin_address
    assert address is not None
    return f"http://127.0.0.1:{address[1]}{PREFIX}"


def in_threads(count: int, target: Callable[[], Any]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    return threads


# --- the admin listener ----------------------------------------------------------------------

def test_probes_on_the_admin_port_answer_while_every_worker_is_busy(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway],
        record_property: Callable[[str, object], None]) -> None:
    """The issue's reproduction: 4 threads, a deployment taking 8 s, 12 calls in flight."""
    backend = fake(reply(delay=8))
    # refusals off (a bound above the threads), so the main port really is saturated
    gw = start_gateway([backend], threads=4, max_in_progress=1000, admin_port=free_port())
    statuses: list[object] = []

    def call() -> None:
        try:
            statuses.append(requests.post(f"{gw.url}/lb", json=CHAT, timeout=30).status_code)
        except requests.RequestException as exc:
            statuses.append(type(exc).__name__)

    clients = in_threads(12, call)
    wait_until(lambda: backend.calls == 4, timeout=10)  # every worker waits on the deployment
    with pytest.raises(requests.Timeout):  # the premise: the main port's probe is queued
        requests.get(f"{gw.url}/healthz", timeout=0.5)
    admin = admin_url(gw)
    for route in ("healthz", "readyz", "metrics", "prometheus"):
        started = time.monotonic()
        r = requests.get(f"{admin}/{route}", timeout=5)
        took = time.monotonic() - started
        print(f"admin /{route} answered {r.status_code} in {took * 1000:.1f} ms "
              f"with every main worker busy")
        record_property(f"admin_{route}_ms", round(took * 1000, 1))
        assert r.status_code == 200
        assert took < 1.0  # the 100 ms requirement is measured by bench/overload.py
    backend.stopping.set()  # the deployment answers now; the queued calls go through
    for t in clients:
        t.join(20)
    assert statuses == [200] * 12


def test_the_admin_port_serves_admin_routes_only(fake: Callable[..., FakeBackend],
                                                 start_gateway: Callable[..., RunningGateway]
                                                 ) -> None:
    backend = fake()
    gw = start_gateway([backend], admin_port=free_port())
    admin = admin_url(gw)
    http = requests.Session()
    for route in ("healthz", "readyz", "metrics", "prometheus", "instanceinfo", "capacity",
                  "dashboard", "dashboard/dashboard.js", "openapi.yaml",
                  f"reconfig/{GATEWAY_KEY}"):
        assert http.get(f"{admin}/{route}", timeout=10).status_code == 200, route
    r = http.post(f"{admin}/reconfig", headers={"x-api-gateway-key": GATEWAY_KEY}, timeout=10)
    assert r.status_code == 200
    base = admin.removesuffix(PREFIX)
    for method, url in (("POST", f"{admin}/lb"), ("GET", f"{admin}/lb"),
                        ("POST", f"{base}/openai/deployments/dep/chat/completions"),
                        ("POST", f"{base}/v1/chat/completions"), ("GET", f"{base}/v1/models"),
                        ("GET", f"{base}/no/such/path")):
        r = http.request(method, url, json=CHAT, timeout=10)
        assert r.status_code == 404, url
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "NotFound"
    assert http.post(f"{admin}/healthz", timeout=10).status_code == 405  # an admin path
    assert backend.calls == 0
    # the main port keeps every route of the original (compatibility)
    assert gw.lb().status_code == 200
    for route in ("healthz", "readyz", "metrics", "instanceinfo", f"reconfig/{GATEWAY_KEY}"):
        assert gw.get(route).status_code == 200, route


def test_no_admin_listener_unless_a_port_is_set(fake: Callable[..., FakeBackend],
                                               start_gateway: Callable[..., RunningGateway],
                                               tmp_path: Any) -> None:
    gw = start_gateway([fake()])
    assert gw.server.admin is None and gw.server.admin_address is None
    env = base_env(tmp_path / "c.json")
    with pytest.raises(SettingsError, match="API_GATEWAY_ADMIN_PORT must differ"):
        Settings.from_env({**env, "API_GATEWAY_PORT": "9000", "API_GATEWAY_ADMIN_PORT": "9000"})


def test_sigterm_drains_the_main_port_and_stops_both(tmp_path: Any,
                                                     fake: Callable[..., FakeBackend]) -> None:
    # about 5 s long, so the drain is still under way when the admin port is asked
    backend = fake().script(stream([*(sse_event(chunk(i, "x")) for i in range(16)),
                                    DONE_EVENT], gap=0.3))
    admin_port = free_port()
    with wsgi_process(tmp_path, [backend], API_GATEWAY_ADMIN_PORT=str(admin_port),
                      API_GATEWAY_SHUTDOWN_GRACE="20") as (proc, prefix, port):
        admin = f"http://127.0.0.1:{admin_port}{PREFIX}"
        assert requests.get(f"{admin}/healthz", timeout=5).status_code == 200
        r = requests.post(f"{prefix}/lb", json={"stream": True}, stream=True, timeout=30)
        lines = r.iter_lines()
        next(lines)
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(port), timeout=5)
        # while the main port drains, the probes still answer on the admin port
        assert requests.get(f"{admin}/healthz", timeout=5).status_code == 200
        assert [line for line in lines if line][-1] == b"data: [DONE]"
        assert proc.wait(15) == 0
        assert _refused(admin_port)


# --- admission control -----------------------------------------------------------------------

def test_the_default_bound_leaves_threads_free() -> None:
    assert admission_limit(4, 0) == 3
    assert admission_limit(16, 0) == 14
    assert admission_limit(512, 0) == 496
    assert admission_limit(1, 0) == 1
    assert admission_limit(512, 20) == 20
    gate, environ = Admission(1), {}
    assert gate.admit(environ) and not gate.admit({})
    assert (gate.in_progress, gate.refused) == (1, 1)
    gate.leave()
    assert gate.in_progress == 0


def test_calls_beyond_the_bound_are_refused_at_once_and_probes_never(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    backend = fake(reply(delay=30))
    gw = start_gateway([backend], threads=4)  # the default bound: 3
    statuses: list[int] = []
    held = in_threads(3, lambda: statuses.append(gw.lb().status_code))
    wait_until(lambda: backend.calls == 3, timeout=10)
    # a queued call would wait 30 s for a thread: the timeout makes "at once" testable
    r = requests.post(f"{gw.url}/lb", json=CHAT, timeout=5)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "1000"
    assert r.headers["x-request-id"]
    assert r.json()["error"]["code"] == "Overloaded"
    assert backend.calls == 3  # nothing was forwarded
    for route in ("healthz", "readyz", "metrics", "instanceinfo"):
        assert requests.get(f"{gw.url}/{route}", timeout=5).status_code == 200, route
    text = requests.get(f"{gw.url}/prometheus", timeout=5).text
    assert "apirouter_admission_refused_total 1.0" in text
    assert "apirouter_calls_in_progress 3.0" in text
    assert "apirouter_admission_limit 3.0" in text
    backend.stopping.set()
    for t in held:
        t.join(10)
    assert statuses == [200, 200, 200]
    wait_until(lambda: gw.gateway.admission.in_progress == 0, timeout=5)
    assert gw.lb().status_code == 200


def test_a_stream_holds_its_place_until_its_last_event(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    events = [*(sse_event(chunk(i, "x")) for i in range(5)), DONE_EVENT]
    backend = fake().script(stream(events, gap=0.3))
    gw = start_gateway([backend], max_in_progress=1)
    r = requests.post(f"{gw.url}/lb", json={"stream": True}, stream=True, timeout=10)
    lines = r.iter_lines()
    next(lines)  # the stream is under way
    refused = requests.post(f"{gw.url}/lb", json=CHAT, timeout=5)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "Overloaded"
    assert [line for line in lines if line][-1] == b"data: [DONE]"
    r.close()
    wait_until(lambda: gw.gateway.admission.in_progress == 0, timeout=5)
    assert gw.lb().status_code == 200
    assert backend.calls == 2


# --- slow clients ------------------------------------------------------------------------------

class SlowClient:
    """A connection that sends ``data`` one byte per second, and notes when it is closed."""

    def __init__(self, port: int, data: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.data = data
        self.sent = 0
        self.last_sent = 0.0
        self.answer = b""
        self.closed_at: float | None = None

    def tick(self, now: float) -> None:
        if self.closed_at is not None:
            return
        try:
            while select.select([self.sock], [], [], 0)[0]:
                data = self.sock.recv(4096)
                if not data:
                    self._close(now)
                    return
                self.answer += data
            if now - self.last_sent >= 1.0 and self.sent < len(self.data):
                self.sock.send(self.data[self.sent:self.sent + 1])
                self.sent += 1
                self.last_sent = now
        except OSError:
            self._close(now)

    def _close(self, now: float) -> None:
        self.closed_at = now
        self.sock.close()


@pytest.fixture
def slow_clients() -> Iterator[list[SlowClient]]:
    made: list[SlowClient] = []
    yield made
    for client in made:
        if client.closed_at is None:
            client.sock.close()


def test_slow_clients_are_cut_off_at_the_deadline_while_calls_are_served(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway],
        slow_clients: list[SlowClient]) -> None:
    backend = fake()
    gw = start_gateway([backend], request_read_timeout=2.0)
    port = gw.server.address[1]
    body = json.dumps(CHAT).encode()
    head = (f"POST {PREFIX}/lb HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    started = time.monotonic()
    # 25 send their headers a byte a second, 25 their headers at once and their body slowly
    for _ in range(25):
        slow_clients.append(SlowClient(port, head + body))
    for _ in range(25):
        client = SlowClient(port, body)
        client.sock.sendall(head)
        slow_clients.append(client)
    served = []
    while time.monotonic() - started < 8 and any(c.closed_at is None for c in slow_clients):
        for client in slow_clients:
            client.tick(time.monotonic())
        served.append(gw.lb().status_code)
        time.sleep(0.1)
    assert served and set(served) == {200}
    assert backend.calls == len(served)  # no slow request ever reached the deployment
    lasted = [c.closed_at - started for c in slow_clients if c.closed_at is not None]
    assert len(lasted) == 50, "some slow clients were still connected after 8 s"
    # the deadline (2 s), checked every second by waitress's cleanup pass (and some slack)
    assert min(lasted) >= 1.9 and max(lasted) <= 6.0, lasted
    for client in slow_clients:
        assert client.answer.startswith(b"HTTP/1.1 408 "), client.answer[:60]
        assert json.loads(client.answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == \
            "RequestTimeout"


def read_answer(sock: socket.socket) -> bytes:
    """One whole answer with a Content-Length, read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(4096)
        assert part, data
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        part = sock.recv(4096)
        assert part, data
        body += part
    return head + b"\r\n\r\n" + body


def test_the_deadline_spares_idle_connections_and_long_calls(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    backend = fake(reply(delay=2.5))
    gw = start_gateway([backend], request_read_timeout=1.0)
    body = json.dumps(CHAT).encode()
    call = (f"POST {PREFIX}/lb HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    probe = f"GET {PREFIX}/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", gw.server.address[1]), timeout=10) as sock:
        # a call longer than the deadline: its request was whole, the deadline does not apply
        sock.sendall(call)
        assert read_answer(sock).startswith(b"HTTP/1.1 200 ")
        # the same keep-alive connection, idle for longer than the deadline plus a cleanup pass
        time.sleep(2.5)
        sock.sendall(probe)
        assert read_answer(sock).startswith(b"HTTP/1.1 200 ")


# --- JSON 413 for every over-limit body -------------------------------------------------------

LIMIT = MIB


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("extra", [1, 2 * MIB], ids=["limit+1", "limit+2MiB"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_every_over_limit_body_gets_the_json_413(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway],
        extra: int, framing: str) -> None:
    backend = fake()
    gw = start_gateway([backend], max_body_bytes=LIMIT)
    data = b" " * (LIMIT + extra)
    r = requests.post(f"{gw.url}/lb", data=chunks(data) if framing == "chunked" else data,
                      headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "PayloadTooLarge"
    assert error["message"] == (f"The request body is larger than the gateway's limit of "
                                f"{LIMIT} bytes.")
    assert backend.calls == 0
    assert gw.lb().status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_is_served(fake: Callable[..., FakeBackend],
                                               start_gateway: Callable[..., RunningGateway],
                                               framing: str) -> None:
    backend = fake()
    gw = start_gateway([backend], max_body_bytes=LIMIT)
    payload = json.dumps(CHAT).encode()
    data = payload + b" " * (LIMIT - len(payload))
    r = requests.post(f"{gw.url}/lb", data=chunks(data) if framing == "chunked" else data,
                      headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 200
    assert len(backend.received[0].body) == LIMIT


def test_a_client_sending_a_huge_body_reads_the_413_instead_of_a_reset(
        fake: Callable[..., FakeBackend], start_gateway: Callable[..., RunningGateway]) -> None:
    """Answered at its headers, the body still coming: the gateway reads and drops the rest
    for a moment instead of closing at once, which makes the kernel send a reset."""
    gw = start_gateway([fake()], max_body_bytes=LIMIT)
    size = LIMIT + 2 * MIB
    with socket.create_connection(("127.0.0.1", gw.server.address[1]), timeout=10) as sock:
        sock.sendall(f"POST {PREFIX}/lb HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode())
        for part in chunks(b" " * size):
            sock.sendall(part)  # a reset would raise ConnectionResetError here
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(4096)
            assert data, answer
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"Content-Type: application/json" in answer


def test_waitress_own_errors_are_json(fake: Callable[..., FakeBackend],
                                      start_gateway: Callable[..., RunningGateway]) -> None:
    gw = start_gateway([fake()])
    with socket.create_connection(("127.0.0.1", gw.server.address[1]), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nNot a header\r\n\r\n")
        answer = b""
        while data := sock.recv(4096):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"  # HTTP/1.0: the request line was not understood
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "InvalidRequest"
