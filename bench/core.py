"""What every benchmark shares: the figures it reports, measuring a process, ports, the bench's own stack.

A benchmark module exposes ``run(ctx: BenchContext) -> list[Figure]``. Each figure is one line of the
table ``make bench`` prints: our figure, the anchor's figure measured in the same invocation on the same
data, their ratio, the goal, and whether it is met.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
CACHE_DIR = REPO / ".ct" / "bench-cache"


@dataclass
class Figure:
    """One measured figure, ours beside the anchor's.

    Attributes:
        bench: the benchmark (``serving``, ``drift``, ``validation``, ``dag-parse``, ``loop``).
        name: what is measured, e.g. ``req/s, 1-row body``.
        unit: ``req/s``, ``ms``, ``s``, ``MB``, ``count`` ...
        ours: the project's figure (None if it could not be measured; ``note`` says why).
        anchor: the anchor's figure, or None when the figure has no anchor.
        goal: the goal as text, e.g. ``>= 4x anchor`` or ``<= 10 s``.
        met: whether the goal is met; None when the figure carries no goal.
        note: anything a reader needs to interpret the line.
        detail: raw numbers behind the figure (kept in the JSON only).
    """

    bench: str
    name: str
    unit: str
    ours: float | None
    anchor: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.anchor:
            return None
        return self.ours / self.anchor

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def at_least(ours: float | None, bound: float | None) -> bool | None:
    """``ours >= bound``; None if either is unknown."""
    return None if ours is None or bound is None else ours >= bound


def at_most(ours: float | None, bound: float | None) -> bool | None:
    """``ours <= bound``; None if either is unknown."""
    return None if ours is None or bound is None else ours <= bound


@dataclass
class BenchContext:
    """What a benchmark gets from the runner.

    Attributes:
        quick: smaller sizes and shorter runs (the whole ``--quick`` run stays under 2 minutes).
        workdir: scratch space of this invocation (data, stack state, reports).
        shared: values one benchmark leaves for another (e.g. the loop's stack home for serving).
    """

    quick: bool
    workdir: Path
    shared: dict[str, Any] = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def cache(self, name: str, *sources: Path) -> Path:
        """A folder for generated inputs, kept across runs while ``sources`` (the code making them) stay.

        Simulating and staging a million rows takes longer than some benchmarks; the inputs are a
        pure function of the seed and of this code, so they are kept under ``.ct/bench-cache``.
        """
        digest = hashlib.sha256()
        for path in sorted(
            {*sources, REPO / "bench" / "data.py", REPO / "include" / "config" / "dataset.yaml"}
        ):
            digest.update(path.read_bytes())
        folder = CACHE_DIR / f"{name}-{digest.hexdigest()[:12]}"
        # Inputs made by older code are of no further use (a 1M-row day is hundreds of MB).
        for stale in CACHE_DIR.glob(f"{name}-*"):
            if stale != folder:
                shutil.rmtree(stale, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return folder


@dataclass
class ProcessResult:
    """A child process measured from outside: wall time, peak RSS and what it printed."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        """The last stdout line parsed as JSON (the worker's own report)."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        if not lines:
            raise RuntimeError(f"process printed nothing on stdout; stderr tail:\n{self.stderr[-2000:]}")
        return json.loads(lines[-1])


def measure_process(
    args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 1800
) -> ProcessResult:
    """Run a command to its end and measure it from outside.

    Wall time runs from spawn to exit (interpreter start and imports included). The peak RSS is the
    child's own high-water mark (``VmHWM``), polled every 20 ms and completed by the ``vmhwm_mb`` the
    child may report in its last JSON line (see :func:`self_vmhwm_mb`).

    Raises:
        RuntimeError: the command failed (its stderr tail is included) or ran past ``timeout``.
    """
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}-{time.monotonic_ns()}"
    with open(f"{out_path}.out", "w+") as out, open(f"{out_path}.err", "w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(args), env=env, cwd=cwd, stdout=out, stderr=err)
        deadline = started + timeout
        peak_kb = 0
        while True:
            # VmHWM is the high-water mark of the process's own memory since its exec. wait4's
            # ru_maxrss is not: it keeps the RSS of the forked bench process before the exec.
            peak_kb = max(peak_kb, _vmhwm_kb(proc.pid))
            pid, status, _usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{' '.join(args)}: still running after {timeout:.0f} s; killed")
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = ProcessResult(proc.returncode, wall, peak_kb / 1024, out.read(), err.read())
    try:  # the worker's own last reading, taken at its end (polling may miss a final peak)
        reported = result.json().get("vmhwm_mb")
        if reported:
            result.peak_rss_mb = max(result.peak_rss_mb, float(reported))
    except (RuntimeError, ValueError, AttributeError):
        pass
    for suffix in (".out", ".err"):
        Path(f"{out_path}{suffix}").unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited with {result.returncode}; stderr tail:\n{result.stderr[-3000:]}"
        )
    return result


def _vmhwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def self_vmhwm_mb() -> float:
    """This process's peak RSS since its exec (for a worker's report; ``ru_maxrss`` includes the fork)."""
    return _vmhwm_kb(os.getpid()) / 1024


def python_cmd(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter (the project's venv)."""
    return [sys.executable, "-m", module, *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for measured children: ours, plus the bytecode cache the Makefile sets."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(REPO / ".ct" / "pycache"))
    env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (bind to 0 and release)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], what: str, timeout: float, every: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def stack_env(home: Path) -> dict[str, str]:
    """``CT_*`` variables for a bench stack under ``home`` on free loopback ports (never the demo's)."""
    return {
        "CT_HOME": str(home),
        "CT_AIRFLOW_PORT": str(free_port()),
        "CT_MLFLOW_PORT": str(free_port()),
        "CT_ENDPOINT_PORT": str(free_port()),
        "CT_SMTP_PORT": str(free_port()),
    }
