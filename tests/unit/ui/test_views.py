"""What the pages show, gathered from a lake the pipeline's own functions wrote.

A module lake holds two clean days and one bad day (landed by the simulator, staged, validated with
Great Expectations, published or quarantined) and two drift reports (Evidently, one drifted window and
one control), so every view reads files exactly as the stages write them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from continuous_training.config import load_contract
from continuous_training.data.ingest import stage_raw_partition
from continuous_training.data.partitions import publish_validated, quarantine_partition
from continuous_training.data.validate import validate_partition
from continuous_training.lake import Lake
from continuous_training.monitoring.drift import compute_drift
from continuous_training.ops.simulate import DRIFT_COLUMNS, SimulatorConfig, generate_day, land_day
from continuous_training.ui import views

CLEAN = ["2026-10-05", "2026-10-06"]
BAD = "2026-10-07"
CONFIG = SimulatorConfig(seed=5, rows_per_day=300, bad_days={BAD: "out_of_range"})


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    root = tmp_path_factory.mktemp("ui")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CT_HOME", str(root / "home"))
        mp.setenv("CT_LAKE", str(root / "lake"))
        lake = Lake.from_settings()
        contract = load_contract()
        for day in [*CLEAN, BAD]:
            land_day(lake, date.fromisoformat(day), CONFIG)
            stage_raw_partition(lake, day)
            outcome = validate_partition(lake, day, contract)
            if outcome["success"]:
                publish_validated(lake, day, outcome, contract)
            else:
                quarantine_partition(lake, day, outcome)
        reference = generate_day(date(2026, 10, 5), SimulatorConfig(seed=8, rows_per_day=5000), contract)
        drifted = SimulatorConfig(seed=6, rows_per_day=2500, drift_from=date(2026, 10, 1))
        for key, config in (
            ("monitor__control", SimulatorConfig(seed=7, rows_per_day=2500)),
            ("monitor__drift", drifted),
        ):
            compute_drift(
                reference,
                generate_day(date(2026, 10, 8), config, contract),
                contract=contract,
                report_dir=lake.drift_report_dir(key),
                title=key,
            )
        yield lake


def test_drift_runs_newest_first_with_the_verdict_and_the_report(lake: Lake) -> None:
    runs = views.drift_runs(lake)
    assert [r["run_key"] for r in runs] == ["monitor__drift", "monitor__control"]
    drift, control = runs
    assert set(drift["drifted_columns"]) & set(DRIFT_COLUMNS)
    assert control["drifted_columns"] == []
    assert drift["has_report"]
    assert drift["at"] >= control["at"]


def test_a_drift_run_lists_its_columns_by_score(lake: Lake) -> None:
    run = views.drift_run(lake, "monitor__drift")
    scores = [c["score"] for c in run["columns"]]
    assert scores == sorted(scores, reverse=True)
    assert run["columns"][0]["drifted"]
    assert run["columns"][0]["column"] in DRIFT_COLUMNS
    assert {c["column"] for c in run["columns"] if c["drifted"]} == set(run["drifted_columns"])
    assert views.drift_run(lake, "no-such-run") is None


def test_a_column_without_a_score_is_listed_last_and_new_categories_are_shown(tmp_path: Path) -> None:
    from continuous_training.lake import write_json_atomic

    lake = Lake(tmp_path / "lake")
    folder = lake.drift_report_dir("monitor__gaps")
    folder.mkdir(parents=True)
    write_json_atomic(
        folder / "summary.json",
        {
            "drifted_columns": ["home_ownership", "income"],
            "scores": {"age": 0.01, "income": 0.4, "employment_years": None, "home_ownership": 0.03},
            "threshold": 0.1,
            "null_columns": {"current": ["employment_years"], "reference": []},
            "unseen_categories": {"home_ownership": [{"value": "boat", "rows": 40, "share": 0.02}]},
        },
    )
    run = views.drift_run(lake, "monitor__gaps")
    assert [c["column"] for c in run["columns"]] == ["income", "home_ownership", "age", "employment_years"]
    gap = run["columns"][-1]
    assert gap["empty"]
    assert not gap["drifted"]
    assert run["columns"][1]["unseen"] == [{"value": "boat", "rows": 40, "share": 0.02}]


def test_the_report_is_served_only_for_a_folder_the_lake_made(lake: Lake) -> None:
    path = views.drift_report_file(lake, "monitor__drift")
    assert path is not None
    assert "<html" in path.read_text()[:2000].lower()
    assert views.drift_report_file(lake, "../monitor__drift") is None
    assert views.drift_report_file(lake, "nothing") is None


def test_quarantines_show_the_failed_expectations_and_serve_the_bad_rows(lake: Lake) -> None:
    (batch,) = views.quarantines(lake)
    assert batch["day"] == BAD
    assert batch["open"]
    assert batch["bad_rows"] > 0
    failed = {f["column"] for f in batch["failed"]}
    assert failed >= {"age"}
    assert all(f["unexpected_count"] > 0 and f["examples"] for f in batch["failed"])
    rows = views.bad_rows_file(lake, BAD, batch["sha"])
    assert len(pd.read_parquet(rows)) == batch["bad_rows"]
    assert views.bad_rows_file(lake, BAD, "0" * 12) is None
    assert views.bad_rows_file(lake, CLEAN[0], batch["sha"]) is None


def test_a_quarantine_closes_once_a_corrected_batch_of_that_day_is_validated(lake: Lake, tmp_path) -> None:
    import shutil

    other = Lake(tmp_path / "lake")
    shutil.copytree(lake.root / "quarantine", other.root / "quarantine")
    assert views.quarantines(other)[0]["open"]
    shutil.copytree(lake.validated(CLEAN[0]), other.validated(BAD))
    assert not views.quarantines(other)[0]["open"]


def test_served_last_hour_counts_the_rows_and_requests_of_that_hour_only(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake = Lake(tmp_path / "lake")
    now = datetime(2026, 11, 12, 10, 30, tzinfo=UTC)
    served = [now - timedelta(minutes=m) for m in (5, 5, 20, 59, 61, 300)]
    folder = lake.predictions(now.date())
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "request_id": ["a", "a", "b", "c", "d", "e"],
            "served_at": pa.array(served, pa.timestamp("us", "UTC")),
        }
    )
    pq.write_table(table, folder / "part-1-aaaa.parquet")
    assert views.served_last_hour(lake, now) == {"rows_last_hour": 4, "requests_last_hour": 3}
    # A file flushed before the hour began is not even opened.
    old = folder / "part-1-aaaa.parquet"
    stamp = (now - timedelta(hours=2)).timestamp()
    import os

    os.utime(old, (stamp, stamp))
    assert views.served_last_hour(lake, now) == {"rows_last_hour": 0, "requests_last_hour": 0}


def test_the_charts_are_plotly_fragments_without_the_script(lake: Lake) -> None:
    from continuous_training.ui import charts

    runs = views.drift_runs(lake)
    html = charts.scores_over_time(runs)
    assert "Plotly.newPlot" in html
    assert "<script src" not in html  # the page loads plotly.min.js once, from the plugin
    assert DRIFT_COLUMNS[0] in html
    assert charts.scores_over_time([]) == ""
    assert "Plotly.newPlot" in charts.column_scores(views.drift_run(lake, "monitor__drift"))


def test_the_overview_reads_only_the_newest_drift_summary(lake: Lake) -> None:
    newest = views.latest_drift_run(lake)
    assert newest["run_key"] == views.drift_runs(lake)[0]["run_key"]
    assert newest["columns"][0]["drifted"]
    assert views.latest_drift_run(Lake(lake.root / "nothing")) is None


def test_the_drift_page_shows_every_decision_and_the_outcome(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run's decision beside its verdict; a run too small to judge, which has no report, is listed too."""
    from continuous_training.config import DriftPolicy
    from continuous_training.monitoring.retrain import decide_retrain, record_outcome
    from continuous_training.ui import charts
    from continuous_training.ui.app import page_html

    window = {"model_name": "m", "model_version": "3", "window_start": "a", "window_end": "b"}
    summary = views.drift_run(lake, "monitor__drift")
    drift = {**window, **{k: summary[k] for k in ("drifted_columns", "scores", "threshold", "rows_current")}}
    policy = DriftPolicy(min_rows=2000)
    decide_retrain(lake, drift, policy, "monitor__drift", now=datetime(2026, 10, 8, 6, tzinfo=UTC))
    record_outcome(lake, "monitor__drift", {"outcome": "new_champion", "summary": "new champion v4 (was v3)"})
    decide_retrain(
        lake,
        {**window, "rows_current": 12},
        policy,
        "monitor__small",
        now=datetime(2026, 10, 9, 6, tzinfo=UTC),
    )
    # Triggered, its train run not over yet: no outcome on the record.
    decide_retrain(lake, drift, policy, "monitor__pending", now=datetime(2026, 10, 10, 6, tzinfo=UTC))
    monkeypatch.setenv("CT_LAKE", str(lake.root))

    # As the routes make them: views, then the template.
    page = views.drift_page(lake)
    html = page_html("drift.html", "Drift", "/ct/drift", **page, chart=charts.scores_over_time(page["runs"]))
    runs = html.split('<table id="drift-runs">', 1)[1].split("</table>", 1)[0]
    rows = {row.split('href="', 1)[1].split('"', 1)[0]: row for row in runs.split("<tr>")[2:]}
    assert ">triggered<" in rows[next(k for k in rows if k.endswith("/drift/monitor__drift"))]
    assert "none recorded" in rows[next(k for k in rows if k.endswith("/drift/monitor__control"))]
    table = html.split('<table id="decisions">', 1)[1].split("</table>", 1)[0]
    assert table.index("monitor__pending") < table.index("monitor__small") < table.index("monitor__drift"), (
        "newest first"
    )
    assert ">undecided<" in table
    assert "only 12 served rows in the window" in table
    assert "drift__monitor__drift" in table
    assert "new champion v4 (was v3)" in table
    pending = table.split("monitor__pending", 1)[1].split("</tr>", 1)[0]
    assert "outcome not known yet" in pending
    run = views.drift_run(lake, "monitor__drift")
    run_html = page_html("drift_run.html", "Drift", "/ct/drift", run=run, chart=charts.column_scores(run))
    decision = run_html.split('id="decision"', 1)[1].split("</section>", 1)[0]
    assert ">triggered<" in decision
    assert "new champion v4 (was v3)" in decision
