"""``python -m pytest`` installs nothing: no test runs an install script, and CI runs them all.

The tests only look for their tools (tests/tools.py); installing Debian or npm packages on a
user's machine is the scripts' job, run by hand or by .ci/run before the tests.
"""

from __future__ import annotations

import ast
import re

from tests.tools import INSTALLERS, REPO_ROOT

TESTS = REPO_ROOT / "tests"
# the last part of the name of whatever starts a process: subprocess.run/Popen/call/
# check_call/check_output/getoutput, os.system/popen/exec*/spawn*, asyncio's
# create_subprocess_*, pty.spawn, and the tests' own run() helpers
PROCESS_STARTERS = re.compile(
    r"^(run|Popen|call|check_call|check_output|getoutput|getstatusoutput|system|popen"
    r"|exec\w*|spawn\w*|posix_spawn\w*|create_subprocess_\w+)$")


def names_installer(node: ast.AST) -> bool:
    """Whether a string constant in ``node`` names an install script."""
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str)
               and any(name in n.value for name in INSTALLERS) for n in ast.walk(node))


def called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def installer_runs(source: str) -> list[int]:
    """Line numbers of calls that start a process with an install script in their arguments,
    named there or through a variable assigned from its name."""
    tree = ast.parse(source)
    tainted = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None \
                and names_installer(node.value):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            tainted |= {t.id for t in targets if isinstance(t, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and PROCESS_STARTERS.match(called_name(node))):
            continue
        arguments = [*node.args, *(k.value for k in node.keywords)]
        if any(names_installer(a) or any(isinstance(n, ast.Name) and n.id in tainted
                                         for n in ast.walk(a)) for a in arguments):
            lines.append(node.lineno)
    return lines


def test_installer_runs_are_found() -> None:
    """The check itself: it finds the fixtures' old on-demand installs, and lets a skip reason
    or a read of the script's text be."""
    assert installer_runs(
        'INSTALLER = ROOT / "scripts" / "install-browser.sh"\n'
        'done = subprocess.run(["bash", str(INSTALLER)], capture_output=True)\n') == [2]
    assert installer_runs('subprocess.Popen("bash scripts/install-ci-tools.sh --chart", '
                          'shell=True)\n') == [1]
    assert installer_runs('os.system("scripts/install-node-tools.sh --print-path")\n') == [1]
    assert installer_runs('def run_installer(option):\n'
                          '    return run(["bash", INSTALLER, option])\n'
                          'INSTALLER: Path = REPO / "scripts/install-ci-tools.sh"\n') == [2]
    assert installer_runs('missing_tool("no newman", "bash scripts/install-node-tools.sh")\n'
                          'text = (ROOT / "scripts" / "install-node-tools.sh").read_text()\n'
                          'subprocess.run([shellcheck, "scripts/build-container.sh"])\n') == []


def test_no_test_module_runs_an_install_script() -> None:
    offences = [f"{path.relative_to(REPO_ROOT)}:{line}"
                for path in sorted(TESTS.rglob("*.py"))
                for line in installer_runs(path.read_text(encoding="utf-8"))]
    assert not offences, ("tests must only look for their tools (tests/tools.py), never "
                          f"install them: {offences}")


def test_the_list_of_installers_is_complete() -> None:
    assert set(INSTALLERS) == {p.name for p in (REPO_ROOT / "scripts").glob("install-*")}


def test_ci_runs_every_installer_before_the_tests() -> None:
    lines = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    pytest_line = next(i for i, line in enumerate(lines) if "python -m pytest" in line)
    for name in INSTALLERS:
        runs = [i for i, line in enumerate(lines) if line.strip() == f"bash scripts/{name}"]
        assert runs and runs[0] < pytest_line, f".ci/run does not run {name} before pytest"
