"""Shared fixtures of the deployment checks: the pinned tools, installed on demand.

The tools come from scripts/install-ci-tools.sh and live in $APIROUTER_CI_DIR (default
/var/cache/apirouter-ci). When they cannot be installed, the tests that need them are
skipped with the reason, unless API_GATEWAY_REQUIRE_TOOLS=1 (as in CI): then they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CI_DIR = Path(os.environ.get("APIROUTER_CI_DIR", "/var/cache/apirouter-ci"))
INSTALLER = REPO_ROOT / "scripts" / "install-ci-tools.sh"
# A cold install fetches helm, a virtualenv and builds a base image: about a minute here.
INSTALL_TIMEOUT_S = 600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chart: checks of the Helm chart and static files")
    config.addinivalue_line("markers", "container: builds and runs the container image")


def tools_required() -> bool:
    return os.environ.get("API_GATEWAY_REQUIRE_TOOLS", "") == "1"


def missing_tool(reason: str) -> None:
    """Skip, or fail when the environment requires every tool."""
    if tools_required():
        pytest.fail(f"{reason} (API_GATEWAY_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(reason)


def run_installer(option: str) -> str | None:
    """Run the installer; None when it worked, else the end of what it said."""
    try:
        done = subprocess.run(
            ["bash", str(INSTALLER), option],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{INSTALLER.name} {option} did not finish: {exc}"
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        return f"{INSTALLER.name} {option} failed ({done.returncode}): {tail}"
    return None


@dataclass(frozen=True)
class ChartTools:
    helm: Path
    kubernetes_validate: Path
    yamllint: Path
    hadolint: Path
    shellcheck: Path
    python: Path  # the tools' virtualenv: has PyYAML to read rendered manifests


@dataclass(frozen=True)
class ContainerTools:
    podman: str
    env: dict[str, str]  # environment for podman: CONTAINERS_CONF set


@pytest.fixture(scope="session")
def chart_tools() -> ChartTools:
    bin_dir = CI_DIR / "bin"
    tools = ChartTools(
        helm=bin_dir / "helm",
        kubernetes_validate=bin_dir / "kubernetes-validate",
        yamllint=bin_dir / "yamllint",
        hadolint=bin_dir / "hadolint",
        shellcheck=bin_dir / "shellcheck",
        python=bin_dir / "python",
    )
    # The installer is quick when everything is there and checks the pins, so always run it.
    problem = run_installer("--chart")
    absent = [p.name for p in vars(tools).values() if not os.access(p, os.X_OK)]
    if absent:
        missing_tool(f"chart tools missing ({', '.join(absent)}): {problem or 'not installed'}")
    return tools


@pytest.fixture(scope="session")
def container_tools() -> ContainerTools:
    problem = run_installer("--container")
    conf = CI_DIR / "containers.conf"
    podman = shutil.which("podman")
    if problem or podman is None or not conf.is_file():
        missing_tool(f"podman and the base image are not available: {problem or 'not installed'}")
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    return ContainerTools(podman=podman, env=env)
