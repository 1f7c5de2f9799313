"""What the machine and a process are doing, read from /proc, and small process helpers."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; raise if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only the process we started."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the process under test and the load generators run on (None: no pinning)."""

    server: str | None
    load: str | None

    @classmethod
    def choose(cls, enabled: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(str(cpus[0]), ",".join(str(c) for c in cpus[1:]))

    @staticmethod
    def prefix(cpus: str | None) -> list[str]:
        """``taskset -c CPUS`` to put before a command, or nothing."""
        return ["taskset", "-c", cpus] if cpus else []

    def describe(self) -> str:
        if self.server is None:
            return "none (fewer than 2 CPUs, or disabled)"
        return (f"server under test on CPU {self.server}; "
                f"load generators and fakes on CPU {self.load}")


# --- one process ------------------------------------------------------------------------------

def _parents() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2:].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    parents = _parents()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += [child for child, parent in parents.items() if parent == current]
    return tree


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and its live descendants."""
    user = system = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        user += int(fields[11])  # utime (field 14)
        system += int(fields[12])  # stime (field 15)
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` and its live descendants."""
    return sum(cpu_split(pid))


def status_fields(pid: int) -> dict[str, int]:
    """VmHWM, VmRSS (kB) and Threads of ``pid`` summed over its tree (0 when gone)."""
    totals = {"VmHWM": 0, "VmRSS": 0, "Threads": 0}
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(":")
            if name in totals:
                totals[name] += int(value.split()[0])
    return totals


# --- the machine ------------------------------------------------------------------------------

def cpu_times() -> dict[str, tuple[int, int]]:
    """(idle, total) jiffies per CPU line of /proc/stat ("cpu" is the sum)."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        numbers = [int(v) for v in values[:8]]  # guest time is already in user
        times[name] = (numbers[3] + numbers[4], sum(numbers))  # idle + iowait
    return times


def idle_shares(before: dict[str, tuple[int, int]],
                after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Share of time each CPU was idle between two :func:`cpu_times` readings."""
    shares = {}
    for name, (idle, total) in after.items():
        idle0, total0 = before.get(name, (0, 0))
        spent = total - total0
        shares[name] = round((idle - idle0) / spent, 3) if spent > 0 else 1.0
    return shares


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_state(sample: float = 1.0) -> dict[str, object]:
    """Load averages and idle share per CPU over ``sample`` seconds, before a run."""
    before = cpu_times()
    time.sleep(sample)
    return {"loadavg": loadavg(), "idle": idle_shares(before, cpu_times())}


def machine_info() -> dict[str, object]:
    """CPU model, cores, memory and OS: the header of every report."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": model, "cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def tool_version(cmd: Sequence[str]) -> str:
    """First line a tool prints about its version (nginx prints on stderr)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def ensure_tools(tools: Sequence[str], packages: Sequence[str]) -> None:
    """Install missing tools from apt when root; otherwise say how, and stop."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"bench: {', '.join(missing)} missing; install them with "
                         f"`apt-get install -y {' '.join(packages)}` (as root) and retry")
    print(f"bench: installing {' '.join(packages)} from apt ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        subprocess.run(cmd, check=True, env=env, timeout=600, stdout=subprocess.DEVNULL)
    still = [t for t in tools if shutil.which(t) is None]
    if still:
        raise SystemExit(f"bench: {', '.join(still)} still missing after apt-get install")


def start_simulator(cmd: Sequence[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    """Start ``python -m simulator`` (``cmd``, on port 0) and read the base URL it announces;
    the process is stopped again if it announces none."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "simulator: listening on http://HOST:PORT ..."
    if "listening on " not in line:
        stop_process(proc)
        raise RuntimeError(f"the simulator did not start: {line.strip()!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]
