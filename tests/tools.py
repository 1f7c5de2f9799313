"""Where the tests look for tools outside Python, and what they do when one is missing.

The tests never install anything: scripts/install-ci-tools.sh (helm, linters, podman),
scripts/install-browser.sh (chromium) and scripts/install-node-tools.sh (newman) do, and
.ci/run runs all three first. A test whose tool is missing is skipped with the command that
installs it, unless API_GATEWAY_REQUIRE_TOOLS=1 (as in CI): then it fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# the installers' default place, and the variables that move it (as in the scripts)
CI_DIR = Path(os.environ.get("APIROUTER_CI_DIR", "/var/cache/apirouter-ci"))
NODE_DIR = Path(os.environ.get("APIROUTER_NODE_DIR", str(CI_DIR / "node")))
NEWMAN = NODE_DIR / "node_modules" / ".bin" / "newman"
NEWMAN_LOCK_DIR = REPO_ROOT / "postman" / "newman"

# the scripts that install those tools (under scripts/); no test may run one
INSTALLERS = ("install-ci-tools.sh", "install-browser.sh", "install-node-tools.sh")


def tools_required() -> bool:
    """Whether a missing tool fails its tests (CI) instead of skipping them."""
    return os.environ.get("API_GATEWAY_REQUIRE_TOOLS", "") == "1"


def missing_tool(reason: str, install: str) -> None:
    """Skip, or fail when the environment requires every tool; ``install`` is the command that
    provides the tool, shown in the reason."""
    message = f"{reason}; install with: {install}"
    if tools_required():
        pytest.fail(f"{message} (API_GATEWAY_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(message)


def newman_stamp() -> str:
    """What install-node-tools.sh writes to $NODE_DIR/.stamp for the current lock files."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((NEWMAN_LOCK_DIR / name).read_bytes())
    return digest.hexdigest()


def stop_process(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not stopped within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
