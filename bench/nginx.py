"""A fast fake Azure OpenAI deployment: nginx answering every call with one fixed JSON body.

nginx runs from a temporary directory with its own configuration (``nginx -c CONF -p DIR``),
in the foreground (``daemon off``), and is stopped with SIGTERM at the end. It is fast enough
that the gateway, not the fake, is the limit.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from .system import free_port, stop_process, wait_port

# What Azure answers to a small chat completion, with usage so the gateway counts tokens.
CHAT_COMPLETION = {
    "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1733000000,
    "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": "Hello! How can I help you today?",
                             "refusal": None}}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28},
}
DEPLOYMENT_PATH = "/openai/deployments/bench/chat/completions?api-version=2024-10-21"

_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_max_body_size 32m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            add_header x-ratelimit-remaining-requests 999 always;
            add_header x-ratelimit-remaining-tokens 999000 always;
            return 200 '{body}';
        }}
    }}
}}
"""


def body_bytes() -> bytes:
    """The fixed answer, as nginx sends it."""
    return json.dumps(CHAT_COMPLETION, separators=(",", ":")).encode()


class NginxFake:
    """nginx serving :data:`CHAT_COMPLETION` on 127.0.0.1 from ``workdir``."""

    def __init__(self, workdir: Path, taskset: list[str]) -> None:
        self.dir = workdir / "nginx"
        self.taskset = taskset
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{DEPLOYMENT_PATH}"

    def start(self) -> NginxFake:
        self.dir.mkdir(parents=True, exist_ok=True)
        body = body_bytes().decode()
        assert "'" not in body and "$" not in body  # nginx string quoting and variables
        conf = self.dir / "nginx.conf"
        conf.write_text(_CONF.format(dir=self.dir, port=self.port, body=body))
        cmd = [*self.taskset, "nginx", "-c", str(conf), "-p", str(self.dir),
               "-e", str(self.dir / "error.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port, 10, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            err = self.proc.stderr.read().decode() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc} {err.strip()}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def __enter__(self) -> NginxFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
