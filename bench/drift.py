"""Benchmark 2: the monitor's drift step vs Evidently's ``DataDriftPreset()`` defaults on the same frames.

A 1,000,000-row served window (quick: 100,000) against a 100,000-row reference (quick: 20,000), 15 numeric
and 5 categorical features, drift injected by the simulator into exactly ``DRIFT_COLUMNS`` (a mean shift,
a scale change, a mixture-weight change and a categorical); plus a no-drift control window of the same
size. Each computation runs in its own process: wall time (interpreter start and imports included) and
peak RSS are that process's own.
"""

from __future__ import annotations

from bench.core import BenchContext, Figure, at_most, child_env, measure_process, python_cmd
from bench.data import INJECTED, SIMULATOR, drift_frames


def run(ctx: BenchContext) -> list[Figure]:
    current_rows, reference_rows = (100_000, 20_000) if ctx.quick else (1_000_000, 100_000)
    ctx.log(
        f"drift: simulating {current_rows:,} drifted + {current_rows:,} control rows, {reference_rows:,} reference"
    )
    paths = drift_frames(ctx.cache("drift", SIMULATOR), current_rows, reference_rows)
    measured: dict[tuple[str, str], dict] = {}
    for window in ("drifted", "control"):
        for mode in ("evidently", "ours"):
            out = ctx.workdir / "drift-reports" / f"{mode}-{window}"
            proc = measure_process(
                python_cmd(
                    "bench.drift_worker",
                    "--mode",
                    mode,
                    "--reference",
                    str(paths["reference"]),
                    "--current",
                    str(paths[window]),
                    "--out",
                    str(out),
                ),
                env=child_env(),
            )
            report = proc.json()
            measured[(mode, window)] = {"wall_s": proc.wall_s, "peak_rss_mb": proc.peak_rss_mb, **report}
            ctx.log(
                f"drift {mode:9s} {window:7s}: {proc.wall_s:6.1f} s, {proc.peak_rss_mb:6.0f} MB, "
                f"drifted {report['drifted']}"
            )

    injected = set(INJECTED)
    size = f"{current_rows:,} vs {reference_rows:,} rows"
    # The cost goals are set at 1M rows: at quick sizes both sides are mostly interpreter and imports.
    judge = (lambda met: None) if ctx.quick else (lambda met: met)
    figures = []
    ours, anchor = measured[("ours", "drifted")], measured[("evidently", "drifted")]
    figures.append(
        Figure(
            "drift",
            f"wall time, {size}",
            "s",
            ours["wall_s"],
            anchor["wall_s"],
            "<= 1/4 anchor",
            judge(at_most(ours["wall_s"], anchor["wall_s"] / 4)),
            detail={"ours": ours, "anchor": anchor},
        )
    )
    figures.append(
        Figure(
            "drift",
            f"peak RSS, {size}",
            "MB",
            ours["peak_rss_mb"],
            anchor["peak_rss_mb"],
            "<= 1/2 anchor",
            judge(at_most(ours["peak_rss_mb"], anchor["peak_rss_mb"] / 2)),
        )
    )
    figures.append(
        Figure(
            "drift",
            "HTML report size",
            "MB",
            ours["report_bytes"] / 1e6,
            anchor["report_bytes"] / 1e6,
            note="about 3.5 MB of either report is Evidently's bundled JavaScript",
        )
    )
    found_ours = len(injected & set(ours["drifted"]))
    found_anchor = len(injected & set(anchor["drifted"]))
    figures.append(
        Figure(
            "drift",
            f"injected columns found (of {len(injected)})",
            "count",
            found_ours,
            found_anchor,
            f"= {len(injected)}",
            found_ours == len(injected),
            note=f"injected: {sorted(injected)} (incl. a scale change on revolving_utilization)",
        )
    )
    fp_ours = sorted(set(ours["drifted"]) - injected)
    fp_anchor = sorted(set(anchor["drifted"]) - injected)
    figures.append(
        Figure(
            "drift",
            "undrifted columns flagged, drifted window",
            "count",
            len(fp_ours),
            len(fp_anchor),
            "0",
            not fp_ours,
            note=f"ours flagged {fp_ours}" if fp_ours else "",
        )
    )
    control_ours, control_anchor = measured[("ours", "control")], measured[("evidently", "control")]
    figures.append(
        Figure(
            "drift",
            "columns flagged, no-drift control",
            "count",
            len(control_ours["drifted"]),
            len(control_anchor["drifted"]),
            "0",
            not control_ours["drifted"],
            detail={"ours": control_ours, "anchor": control_anchor},
        )
    )
    figures.append(
        Figure(
            "drift",
            f"wall time, control window, {size}",
            "s",
            control_ours["wall_s"],
            control_anchor["wall_s"],
            "<= 1/4 anchor",
            judge(at_most(control_ours["wall_s"], control_anchor["wall_s"] / 4)),
        )
    )
    return figures
