"""Benchmark 8: the monitor's live performance on 1,000,000 served rows joined with 1,000,000 labels.

The served rows (quick: 100,000) span 14 days, 1% of them scored twice (a client's retry) and 5% never
labelled; the labels add 1% relabelled keys (a correction) and labels of rows served elsewhere. Each
computation runs in its own process (interpreter start and imports included); the anchor is a pandas
inner merge then Evidently's ``ClassificationPreset()`` defaults over the joined rows. Goal (issue): the
step under 5 s and 1 GB on this machine.
"""

from __future__ import annotations

from pathlib import Path

from bench.core import BenchContext, Figure, at_most, child_env, measure_process, python_cmd

DAYS = 14


def _frames(folder: Path, rows: int) -> dict[str, Path]:
    """Served rows and labels as Parquet (seeded), cached by size."""
    import numpy as np
    import pandas as pd

    served_path, labels_path = folder / f"served-{rows}.parquet", folder / f"labels-{rows}.parquet"
    if served_path.exists() and labels_path.exists():
        return {"served": served_path, "labels": labels_path}
    rng = np.random.default_rng(5)
    ids = np.char.add("app-", np.arange(rows).astype(str))
    y = (rng.random(rows) < 0.2).astype("int64")
    score = np.clip(0.2 + 0.5 * (y - 0.2) + rng.normal(0, 0.2, rows), 0.001, 0.999)
    start = pd.Timestamp("2026-11-01", tz="UTC")
    served_at = start + pd.to_timedelta(np.sort(rng.integers(0, DAYS * 86_400_000, rows)), unit="ms")
    retried = rng.choice(rows, rows // 100, replace=False)
    served = pd.DataFrame({"row_id": ids, "served_at": served_at, "model_version": "3", "score": score})
    again = served.iloc[retried].assign(served_at=lambda f: f["served_at"] + pd.Timedelta(seconds=2))
    served = pd.concat([served, again], ignore_index=True)
    labelled = rng.random(rows) >= 0.05
    days = served_at.strftime("%Y-%m-%d").to_numpy()
    labels = pd.DataFrame({"application_id": ids[labelled], "defaulted": y[labelled], "day": days[labelled]})
    fixed = labels.sample(frac=0.01, random_state=1).assign(
        defaulted=lambda f: 1 - f["defaulted"], day="2026-11-30"
    )
    elsewhere = pd.DataFrame(
        {
            "application_id": np.char.add("other-", np.arange(rows // 20).astype(str)),
            "defaulted": 0,
            "day": "2026-11-02",
        }
    )
    labels = pd.concat([labels, fixed, elsewhere], ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    served.to_parquet(served_path, index=False)
    labels.to_parquet(labels_path, index=False)
    return {"served": served_path, "labels": labels_path}


def run(ctx: BenchContext) -> list[Figure]:
    rows = 100_000 if ctx.quick else 1_000_000
    ctx.log(f"performance: {rows:,} served rows over {DAYS} days joined with about {rows:,} labels")
    paths = _frames(ctx.cache("performance", Path(__file__)), rows)
    measured = {}
    for mode in ("evidently", "ours"):
        proc = measure_process(
            python_cmd(
                "bench.performance_worker",
                "--mode",
                mode,
                "--served",
                str(paths["served"]),
                "--labels",
                str(paths["labels"]),
            ),
            env=child_env(),
        )
        measured[mode] = {"wall_s": proc.wall_s, "peak_rss_mb": proc.peak_rss_mb, **proc.json()}
        ctx.log(f"performance {mode:9s}: {proc.wall_s:6.1f} s, {proc.peak_rss_mb:6.0f} MB, {proc.json()}")
    ours, anchor = measured["ours"], measured["evidently"]
    size = f"{rows:,} served x {rows:,} labels"
    judge = (lambda met: None) if ctx.quick else (lambda met: met)
    return [
        Figure(
            "performance",
            f"wall time, {size}",
            "s",
            ours["wall_s"],
            anchor["wall_s"],
            "<= 5 s",
            judge(at_most(ours["wall_s"], 5.0)),
            note=f"ours: join + {ours['windows']} daily windows + verdict; phases {ours['phases']}",
            detail={"ours": ours, "anchor": anchor},
        ),
        Figure(
            "performance",
            f"peak RSS, {size}",
            "MB",
            ours["peak_rss_mb"],
            anchor["peak_rss_mb"],
            "<= 1024 MB",
            judge(at_most(ours["peak_rss_mb"], 1024.0)),
            note="anchor: pandas inner merge + Evidently ClassificationPreset() defaults, one report over all rows",
        ),
        Figure(
            "performance",
            "joined rows (one per served key)",
            "count",
            ours["counts"]["joined"],
            anchor["joined_rows"],
            note=f"ours counts {ours['counts']}; the anchor's inner merge keeps retries and relabelled keys twice",
        ),
    ]
