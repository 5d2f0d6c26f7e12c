"""``python -m bench.validation_worker --mode prepare|ours|gx-defaults``: one measured subject of the
validation benchmark, in its own process; the last stdout line is a JSON report.

- ``prepare`` lands a simulated day with injected bad rows as a landing CSV and stages its raw
  partition, as the ingest DAG's ``stage_partition`` task does (not measured).
- ``ours`` runs the project's validation step on that raw partition as the ingest DAG runs it: the
  library calls of ``steps.validate_partition`` (type, validate with GX, write the validation record)
  and, the batch having failed, of ``steps.quarantine_partition`` (keep the batch, its GX result and
  its bad rows in quarantine). The alert mail is left out: it is not validation.
- ``gx-defaults`` is the anchor: the same suite on the same typed frame, with Great Expectations'
  defaults (a fresh context, progress bars on) and the split the way GX exposes it: result format
  ``COMPLETE``, whose ``unexpected_index_list`` names every failing row; the bad rows and the good
  rows are written as Parquet beside the GX result.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench.core import self_vmhwm_mb

#: The day staged (bench/data.py's Wednesday).
DAY = "2026-11-04"
#: Share of rows given an unknown ``region`` and an unparseable ``annual_income``.
UNKNOWN_CATEGORY_SHARE = 0.005
PARSE_ERROR_SHARE = 0.002


class _Clock:
    """Wall time of named phases, from when the clock is made (imports after that included)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = round(self.phases.get(name, 0.0) + now - self.last, 3)
        self.last = now


def prepare(lake_root: Path, rows: int) -> dict[str, Any]:
    """Land ``rows`` simulated rows with bad ones injected and stage the raw partition."""
    import numpy as np

    from bench.data import SEED, simulated_rows
    from continuous_training.data.ingest import stage_raw_partition
    from continuous_training.lake import Lake
    from continuous_training.ops.simulate import corrupt_batch, landing_csv_bytes

    clean = simulated_rows(rows, drift=False)
    # The simulator's own defects: out-of-range ages and credit scores (3%), nulls in two required columns.
    frame = corrupt_batch(clean, "out_of_range", SEED)
    frame = corrupt_batch(frame, "nulls", SEED)
    rng = np.random.default_rng(SEED)
    region = frame["region"].astype(object)
    region.iloc[rng.choice(rows, int(rows * UNKNOWN_CATEGORY_SHARE), replace=False)] = "atlantis"
    frame["region"] = region
    income = frame["annual_income"].astype(object)
    income.iloc[rng.choice(rows, int(rows * PARSE_ERROR_SHARE), replace=False)] = "n/a"
    frame["annual_income"] = income
    # Every injected value breaks a check, so the truth is the count of rows that differ from the clean day.
    changed = np.zeros(rows, dtype=bool)
    for column in clean.columns:
        before, after = clean[column].astype(object), frame[column].astype(object)
        changed |= (before.isna() != after.isna()).to_numpy() | (
            before.notna() & after.notna() & (before.astype(str) != after.astype(str))
        ).to_numpy()
    lake = Lake(lake_root)
    path = lake.landing(DAY) / f"applications-{DAY}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(landing_csv_bytes(frame))
    manifest = stage_raw_partition(lake, DAY)
    return {
        "rows": manifest["rows"],
        "sha256": manifest["sha256"],
        "csv_mb": round(path.stat().st_size / 2**20, 1),
        "injected_bad_rows": int(changed.sum()),
    }


def ours(lake_root: Path) -> dict[str, Any]:
    """The ingest DAG's validate and quarantine steps on the staged day (what ``steps`` calls)."""
    clock = _Clock()
    from continuous_training.data.partitions import quarantine_partition
    from continuous_training.data.validate import validate_partition
    from continuous_training.lake import Lake, write_json_atomic

    clock.lap("import project")
    lake = Lake(lake_root)
    outcome = validate_partition(lake, DAY)
    clock.lap("validate_partition")
    # data.validate.validate_day: the full outcome is the validation record in the lake.
    write_json_atomic(lake.validation_record(DAY, outcome["sha256"]), outcome)
    clock.lap("write record")
    kept = quarantine_partition(lake, DAY, outcome)
    clock.lap("quarantine")
    return {
        "success": outcome["success"],
        "evaluated": outcome["evaluated"],
        "failed": len(outcome["failed"]),
        "rows": outcome["rows"],
        "bad_rows": outcome.get("bad_rows"),
        "quarantine": kept["path"],
        "phases": clock.phases,
    }


def gx_defaults(lake_root: Path, out_dir: Path) -> dict[str, Any]:
    """The same suite with GX's defaults, the split from ``COMPLETE``'s ``unexpected_index_list``."""
    clock = _Clock()
    import great_expectations as gx

    from continuous_training.config import load_contract
    from continuous_training.data.ingest import read_raw
    from continuous_training.data.validate import build_suite
    from continuous_training.frames import coerce_to_contract
    from continuous_training.lake import Lake

    clock.lap("import")
    contract = load_contract()
    raw, _ = read_raw(Lake(lake_root), DAY)
    clock.lap("read")
    typed, parse_errors = coerce_to_contract(raw, contract)
    clock.lap("coerce")
    ctx = gx.get_context(mode="ephemeral")
    batch = (
        ctx.data_sources.add_pandas("ct")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = ctx.suites.add(build_suite(contract))
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name="contract", data=batch, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": typed}, result_format="COMPLETE")
    clock.lap("gx run")
    bad: set[Any] = set()
    for item in result.results:
        bad.update((item.result or {}).get("unexpected_index_list") or [])
    is_bad = typed.index.isin(list(bad))
    clock.lap("split")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "validation.json").write_text(json.dumps(result.to_json_dict(), default=str))
    text = [c for c in typed.columns if typed[c].dtype == object]
    typed = typed.astype({c: "string" for c in text})
    typed[is_bad].to_parquet(out_dir / "bad_rows.parquet", index=False)
    typed[~is_bad].to_parquet(out_dir / "good_rows.parquet", index=False)
    clock.lap("write")
    return {
        "success": bool(result.success),
        "evaluated": int(result.statistics["evaluated_expectations"]),
        "failed": sum(1 for r in result.results if not r.success),
        "rows": len(typed),
        "bad_rows": int(is_bad.sum()),
        "parse_errors": parse_errors,
        "phases": clock.phases,
    }


def main(argv: list[str] | None = None) -> int:
    """Run one subject and print its JSON report as the last stdout line."""
    parser = argparse.ArgumentParser(prog="python -m bench.validation_worker")
    parser.add_argument("--mode", required=True, choices=("prepare", "ours", "gx-defaults"))
    parser.add_argument("--lake", type=Path, required=True, help="the lake holding the staged day")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to prepare")
    parser.add_argument("--out", type=Path, help="gx-defaults: where to write its outputs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.mode == "prepare":
        report = prepare(args.lake, args.rows)
    elif args.mode == "ours":
        report = ours(args.lake)
    else:
        report = gx_defaults(args.lake, args.out or args.lake.parent / "gx-defaults")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds of this process: less sensitive than wall time to other load on the machine.
    report["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 2)
    report["vmhwm_mb"] = self_vmhwm_mb()
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
