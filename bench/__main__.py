"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, print one table, write JSON.

Every benchmark runs its anchor (MLflow's scoring server, Evidently's and GX's defaults) on the same
data in this same invocation, so ratios compare figures taken on the same machine at the same time.
The results go to ``bench/results/<UTC time>-<full|quick>.json`` with the core count and the package
versions. Nothing here is part of ``make test``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.core import RESULTS_DIR, BenchContext, Figure, stack_env
from continuous_training.ops.stack import pipeline_client_env
from continuous_training.settings import load_settings

#: In run order: the loop first (it leaves the demo's champion for the serving benchmark).
BENCHMARKS = ("loop", "serving", "drift", "performance", "validation", "dag_parse", "ui", "executors")
#: Skipped by ``--quick`` (a stack, a demo and a retraining take minutes).
SLOW = ("loop", "executors")
PACKAGES = (
    "apache-airflow",
    "mlflow",
    "scikit-learn",
    "evidently",
    "great-expectations",
    "pandas",
    "pyarrow",
    "numpy",
    "scipy",
    "fastapi",
    "uvicorn",
)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["wrk"] = shutil.which("wrk")
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render_table(figures: list[Figure]) -> str:
    """The table ``make bench`` prints: figure, ours, anchor, ratio, goal, met."""
    header = ("benchmark", "figure", "ours", "anchor", "ratio", "goal", "met")
    rows = []
    for f in figures:
        met = {True: "yes", False: "NO", None: ""}[f.met]
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        rows.append((f.bench, f"{f.name} ({f.unit})", _fmt(f.ours), _fmt(f.anchor), ratio, f.goal, met))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    notes = [f"- {f.bench} / {f.name}: {f.note}" for f in figures if f.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs, no loop (< 2 min)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)

    chosen = [b for b in BENCHMARKS if (not args.only or b in args.only)]
    if args.quick and not args.only:
        chosen = [b for b in chosen if b not in SLOW]
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="ct-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # One bench stack for the whole invocation, on its own ports and state dir: never the demo's.
    os.environ.update(stack_env(workdir / "home"))
    # This process trains and registers as the pipeline does: as its MLflow account.
    os.environ.update(pipeline_client_env(load_settings()))
    ctx = BenchContext(quick=args.quick, workdir=workdir)
    ctx.log(f"{'quick' if args.quick else 'full'} run of {', '.join(chosen)} in {workdir}")

    figures: list[Figure] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        for name in chosen:
            t0 = time.monotonic()
            ctx.log(f"--- {name}")
            try:
                module = importlib.import_module(f"bench.{name}")
                figures += module.run(ctx)
            except Exception as exc:
                traceback.print_exc()
                failures[name] = f"{type(exc).__name__}: {exc}"
                figures.append(Figure(name, "benchmark failed", "", None, note=failures[name][:300]))
            timings[name] = round(time.monotonic() - t0, 1)
            ctx.log(f"--- {name} took {timings[name]} s")
    finally:
        from continuous_training.ops.stack import stack_down

        stack_down()

    total = time.monotonic() - started
    print()
    print(render_table(figures))
    print(f"\n{len(figures)} figures in {total:.0f} s on {os.cpu_count()} cores")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{stamp}-{'quick' if args.quick else 'full'}.json"
    out.write_text(
        json.dumps(
            {
                "mode": "quick" if args.quick else "full",
                "started_utc": stamp,
                "seconds": round(total, 1),
                "seconds_per_benchmark": timings,
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "platform": platform.platform(),
                    "processor": platform.machine(),
                    "mem_total_gb": _mem_total_gb(),
                },
                "versions": _versions(),
                "failures": failures,
                "figures": [f.as_dict() for f in figures],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"results: {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
