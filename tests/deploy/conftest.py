"""Shared fixtures of the deployment checks: the pinned tools, found where they are installed.

scripts/install-ci-tools.sh installs the tools into $APIROUTER_CI_DIR (default
/var/cache/apirouter-ci); the tests only look for them there. When one is missing, the tests
that need it are skipped with the command that installs it, unless API_GATEWAY_REQUIRE_TOOLS=1
(as in CI): then they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.tools import CI_DIR, missing_tool

REPO_ROOT = Path(__file__).resolve().parents[2]

# what a missing tool's skip reason tells the user to run
INSTALL_CHART = "bash scripts/install-ci-tools.sh --chart"
INSTALL_CONTAINER = "bash scripts/install-ci-tools.sh --container (as root)"
# the Dockerfile's FROM, as podman names it; builds use --pull=never, so it must be there
BASE_IMAGE = "docker.io/library/python:3.11-slim"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chart: checks of the Helm chart and static files")
    config.addinivalue_line("markers", "container: builds and runs the container image")


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
    """The chart tools, linked into $APIROUTER_CI_DIR/bin by the installer."""
    bin_dir = CI_DIR / "bin"
    tools = ChartTools(
        helm=bin_dir / "helm",
        kubernetes_validate=bin_dir / "kubernetes-validate",
        yamllint=bin_dir / "yamllint",
        hadolint=bin_dir / "hadolint",
        shellcheck=bin_dir / "shellcheck",
        python=bin_dir / "python",
    )
    absent = [p.name for p in vars(tools).values() if not os.access(p, os.X_OK)]
    if absent:
        missing_tool(f"chart tools not installed in {bin_dir} ({', '.join(absent)})",
                     INSTALL_CHART)
    return tools


@pytest.fixture(scope="session")
def container_tools() -> ContainerTools:
    """podman with the installer's containers.conf, and the base image in its storage."""
    conf = CI_DIR / "containers.conf"
    podman = shutil.which("podman")
    if podman is None:
        missing_tool("podman is not on PATH", INSTALL_CONTAINER)
    if not conf.is_file():
        missing_tool(f"{conf} is missing", INSTALL_CONTAINER)
    assert podman is not None
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    try:
        found = subprocess.run([podman, "image", "exists", BASE_IMAGE], env=env,
                               capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        found = False
    if not found:
        missing_tool(f"the base image {BASE_IMAGE} is not in podman's storage",
                     INSTALL_CONTAINER)
    return ContainerTools(podman=podman, env=env)
