"""Benchmark 4: parse time of each DAG file and the modules it pulls in.

Each file is parsed in a fresh process after ``airflow.sdk`` is imported (see ``bench.dag_parse_worker``),
several times; the median is reported. It is parsed a second way too, in a process that has first
imported ``airflow.dag_processing.processor``, as the dag-processor's forked parsing process has. The anchor is a one-task DAG written with ``airflow.sdk`` (the
floor any DAG file pays). Goal: at most 50 ms per file and no heavy library imported.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.core import REPO, BenchContext, Figure, at_most, child_env, measure_process, python_cmd

MINIMAL_DAG = """
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def minimal():
    @task
    def hello() -> str:
        return "hello"

    hello()


minimal()
"""


def _env() -> dict[str, str]:
    from continuous_training.ops.stack import airflow_env
    from continuous_training.settings import load_settings

    env = child_env(**airflow_env(load_settings()))
    # The bench stack's own bytecode cache starts cold; parse times are measured warm, as in production.
    env["PYTHONPYCACHEPREFIX"] = child_env()["PYTHONPYCACHEPREFIX"]
    return env


def _parse(path: Path, env: dict[str, str], runs: int, *extra: str) -> dict:
    cmd = python_cmd("bench.dag_parse_worker", str(path), *extra)
    samples = [measure_process(cmd, env=env).json() for _ in range(runs)]
    last = samples[-1]
    return {**last, "ms": statistics.median(s["ms"] for s in samples), "ms_all": [s["ms"] for s in samples]}


def _airflow_core_share(parsed: dict, in_processor: dict) -> str:
    extra = sorted(set(parsed["new_modules"]) - set(in_processor["new_modules"]))
    tops = sorted({".".join(m.split(".")[:2]) for m in extra})
    return f"{len(extra)} modules under {', '.join(tops[:8])}{' ...' if len(tops) > 8 else ''}"


def run(ctx: BenchContext) -> list[Figure]:
    env = _env()
    runs = 1 if ctx.quick else 5
    minimal = ctx.workdir / "minimal_dag.py"
    minimal.write_text(MINIMAL_DAG)
    _parse(minimal, env, 1)  # warm the bytecode cache
    anchor = _parse(minimal, env, runs)
    # Quick mode parses each file once, only as the goal defines it (after airflow.sdk).
    anchor_dp = None if ctx.quick else _parse(minimal, env, runs, "--dag-processor")
    figures = []
    for path in sorted((REPO / "dags").glob("*.py")):
        if not ctx.quick:
            _parse(path, env, 1)  # warm the bytecode cache of what the file imports
        parsed = _parse(path, env, runs)
        in_processor = None if anchor_dp is None else _parse(path, env, runs, "--dag-processor")
        ctx.log(
            f"dag {path.name}: {parsed['ms']:.1f} ms, {len(parsed['new_modules'])} modules, heavy {parsed['heavy']}"
        )
        figures.append(
            Figure(
                "dag-parse",
                f"dags/{path.name} parse",
                "ms",
                parsed["ms"],
                anchor["ms"],
                "<= 50 ms",
                at_most(parsed["ms"], 50.0),
                detail={
                    "runs_ms": parsed["ms_all"],
                    "dags": parsed["dags"],
                    "new_modules": parsed["new_modules"],
                },
            )
        )
        if in_processor is not None:
            figures.append(
                Figure(
                    "dag-parse",
                    f"dags/{path.name} parse, in the dag-processor's parsing process",
                    "ms",
                    in_processor["ms"],
                    anchor_dp["ms"],
                    "<= 50 ms",
                    at_most(in_processor["ms"], 50.0),
                    note=""
                    if parsed["ms"] <= 50
                    else (
                        f"{len(parsed['new_modules'])} modules imported after airflow.sdk, "
                        f"{len(in_processor['new_modules'])} in the dag-processor's process; "
                        f"the difference is Airflow's own: {_airflow_core_share(parsed, in_processor)}"
                    ),
                    detail={"runs_ms": in_processor["ms_all"], "new_modules": in_processor["new_modules"]},
                )
            )
        figures.append(
            Figure(
                "dag-parse",
                f"dags/{path.name} heavy modules",
                "count",
                len(parsed["heavy"]),
                len(anchor["heavy"]),
                "0",
                not parsed["heavy"],
                note=f"imports {parsed['heavy']}" if parsed["heavy"] else "",
            )
        )
    return figures
