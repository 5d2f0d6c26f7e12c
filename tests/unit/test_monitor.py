"""Unit tests of the drift monitor: Evidently on synthetic windows with known drift, the decision table,
the retrain-trigger ledger and the window bounds.

Evidently costs ~10 s to import, so the reports are computed once per module (module-scoped fixtures).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from continuous_training.config import DatasetContract, DriftPolicy, load_contract
from continuous_training.monitor import (
    PREDICTION_COLUMN,
    compute_drift,
    drifted_count_from_report,
    last_retrain_trigger,
    record_retrain_trigger,
    retrain_decision,
    window_bounds,
)
from continuous_training.simulate import DRIFT_COLUMNS, SimulatorConfig, generate_day
from continuous_training.storage import Lake

CONFIG_DIR = Path(__file__).resolve().parents[2] / "include" / "config"
POLICY = DriftPolicy()  # wasserstein / jensenshannon / 0.1, the shipped policy's values

# The drift injected into the drifted window, one column per kind.
MEAN_SHIFT = "credit_score"  # +0.6 std
SCALE_CHANGE = "debt_to_income"  # std x1.5, same mean
MIXTURE_WEIGHTS = "revolving_utilization"  # two components, weights 0.75/0.25 -> 0.4/0.6
CATEGORY_SHUFFLE = "loan_purpose"  # same levels, probabilities permuted
INJECTED = sorted([MEAN_SHIFT, SCALE_CHANGE, MIXTURE_WEIGHTS, CATEGORY_SHUFFLE])


@pytest.fixture(scope="module")
def contract() -> DatasetContract:
    return load_contract(CONFIG_DIR)


def _numeric(name: str, rng: np.random.Generator, n: int, drifted: bool) -> np.ndarray:
    """One numeric feature; the injected columns change only when ``drifted``."""
    if name == MEAN_SHIFT:
        return rng.normal(680 + (36 if drifted else 0), 60, n).round()
    if name == SCALE_CHANGE:
        return rng.normal(0.6, 0.15 * (1.5 if drifted else 1.0), n)
    if name == MIXTURE_WEIGHTS:
        high = rng.random(n) < (0.6 if drifted else 0.25)
        return np.where(high, rng.normal(0.8, 0.08, n), rng.normal(0.25, 0.08, n))
    generators = {
        "age": lambda: rng.normal(42, 12, n).round(),
        "annual_income": lambda: rng.lognormal(11, 0.5, n),
        "loan_amount": lambda: rng.lognormal(9.5, 0.6, n),
        "loan_term_months": lambda: rng.choice([12, 24, 36, 48, 60, 72], n).astype(float),
        "interest_rate": lambda: rng.normal(12, 4, n),
        "num_open_accounts": lambda: rng.poisson(8, n).astype(float),
        "num_credit_inquiries": lambda: rng.poisson(2, n).astype(float),
        "years_employed": lambda: rng.exponential(6, n),
        "num_late_payments": lambda: rng.poisson(0.6, n).astype(float),
        "savings_balance": lambda: rng.lognormal(9, 1.2, n),
        "monthly_debt_payment": lambda: rng.lognormal(6.5, 0.5, n),
        "credit_history_years": lambda: rng.gamma(4, 3, n),
    }
    return generators.get(name, lambda: rng.normal(0, 1, n))()


def _categorical(values: tuple, rng: np.random.Generator, n: int, drifted: bool) -> np.ndarray:
    probs = np.linspace(2.0, 0.5, len(values))
    probs /= probs.sum()
    if drifted:
        probs = probs[::-1]  # the most frequent level becomes the rarest
    return rng.choice(np.array(values, dtype=object), n, p=probs)


def _features(contract: DatasetContract, seed: int, n: int, drifted: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for col in contract.features:
        inject = drifted and col.name in INJECTED
        if col.type == "category":
            data[col.name] = _categorical(col.values, rng, n, inject)
        else:
            data[col.name] = _numeric(col.name, rng, n, inject)
    frame = pd.DataFrame(data)
    # The prediction follows a drifted feature, so it drifts too: reported, but not a drifted feature.
    frame[PREDICTION_COLUMN] = 1 / (1 + np.exp((frame[MEAN_SHIFT] - 680) / 60))
    return frame


def _reference(contract: DatasetContract, seed: int = 1, n: int = 5000) -> pd.DataFrame:
    frame = _features(contract, seed, n, drifted=False)
    frame.insert(0, contract.key, [f"app-{i:06d}" for i in range(n)])
    frame.insert(1, contract.timestamp, pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"))
    frame[contract.target] = (np.random.default_rng(seed).random(n) < frame[PREDICTION_COLUMN]).astype(int)
    return frame


def _served(contract: DatasetContract, seed: int, drifted: bool, n: int = 5000) -> pd.DataFrame:
    frame = _features(contract, seed, n, drifted)
    frame["request_id"] = [f"req-{seed}-{i:06d}" for i in range(n)]
    frame["row_id"] = [f"app-{seed}-{i:06d}" for i in range(n)]
    frame["served_at"] = pd.date_range("2026-02-01", periods=n, freq="s", tz="UTC")
    frame["model_name"] = "loan_default"
    frame["model_version"] = "3"
    return frame


@pytest.fixture(scope="module")
def reference(contract: DatasetContract) -> pd.DataFrame:
    return _reference(contract)


@pytest.fixture(scope="module")
def drifted_result(
    contract: DatasetContract, reference: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    current = _served(contract, seed=2, drifted=True)
    return compute_drift(
        reference,
        current,
        contract=contract,
        policy=POLICY,
        report_dir=tmp_path_factory.mktemp("drifted"),
        title="drifted window",
    )


@pytest.fixture(scope="module")
def control_result(
    contract: DatasetContract, reference: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    # No score column on the reference side here: the prediction is then simply not judged.
    current = _served(contract, seed=3, drifted=False)
    return compute_drift(
        reference.drop(columns=[PREDICTION_COLUMN]),
        current,
        contract=contract,
        policy=POLICY,
        report_dir=tmp_path_factory.mktemp("control"),
    )


def test_drifted_window_flags_exactly_the_injected_columns(
    drifted_result: dict, contract: DatasetContract
) -> None:
    assert drifted_result["drifted_columns"] == INJECTED
    assert set(drifted_result["scores"]) == set(contract.feature_names)
    for col, score in drifted_result["scores"].items():
        # Clear margins on both sides of the threshold, not a coin toss.
        if col in INJECTED:
            assert score >= 2 * POLICY.threshold, (col, score)
        else:
            assert score < POLICY.threshold / 2, (col, score)
    assert drifted_result["share_drifted"] == pytest.approx(len(INJECTED) / len(contract.feature_names))
    assert (drifted_result["num_method"], drifted_result["cat_method"]) == ("wasserstein", "jensenshannon")
    assert drifted_result["rows_reference"] == drifted_result["rows_current"] == 5000


def test_prediction_drift_is_reported_but_not_counted(drifted_result: dict) -> None:
    prediction = drifted_result["prediction_drift"]
    assert prediction["column"] == PREDICTION_COLUMN
    assert prediction["drifted"] is True
    assert PREDICTION_COLUMN not in drifted_result["drifted_columns"]
    assert PREDICTION_COLUMN not in drifted_result["scores"]


def test_control_window_flags_nothing(control_result: dict, contract: DatasetContract) -> None:
    assert control_result["drifted_columns"] == []
    assert control_result["share_drifted"] == 0.0
    assert max(control_result["scores"].values()) < POLICY.threshold / 2
    assert control_result["prediction_drift"] is None


def test_report_files_are_written_and_readable(drifted_result: dict, contract: DatasetContract) -> None:
    html = Path(drifted_result["report_html"])
    assert html.name == "drift_report.html"
    assert html.stat().st_size > 100_000
    text = html.read_text(encoding="utf-8")
    for col in contract.feature_names:
        assert col in text
    report = json.loads(Path(drifted_result["report_json"]).read_text())
    (counted,) = [m for m in report["metrics"] if m["config"]["type"].endswith("DriftedColumnsCount")]
    assert set(counted["config"]["columns"]) == {*contract.feature_names, PREDICTION_COLUMN}
    # The injected columns and the prediction that follows one of them.
    assert counted["value"]["count"] == len(INJECTED) + 1
    assert drifted_count_from_report(report) == len(INJECTED) + 1
    summary = json.loads(Path(drifted_result["summary_json"]).read_text())
    assert summary == json.loads(json.dumps(drifted_result))
    assert not list(html.parent.glob(".*.tmp"))


def test_compute_drift_is_idempotent(
    drifted_result: dict, contract: DatasetContract, reference: pd.DataFrame
) -> None:
    report_dir = Path(drifted_result["report_html"]).parent
    again = compute_drift(
        reference,
        _served(contract, seed=2, drifted=True),
        contract=contract,
        policy=POLICY,
        report_dir=report_dir,
        title="drifted window",
    )
    assert again == drifted_result
    assert sorted(p.name for p in report_dir.iterdir()) == [
        "drift_report.html",
        "drift_report.json",
        "summary.json",
    ]


def test_small_reference_keeps_the_pinned_methods(contract: DatasetContract, tmp_path: Path) -> None:
    # At <= 1,000 reference rows Evidently's defaults switch to KS / chi-square; the policy's methods stay.
    small = _reference(contract, n=300)
    result = compute_drift(
        small,
        _served(contract, seed=6, drifted=True, n=300),
        contract=contract,
        policy=POLICY,
        report_dir=tmp_path,
    )
    report = json.loads(Path(result["report_json"]).read_text())
    (counted,) = [m for m in report["metrics"] if m["config"]["type"].endswith("DriftedColumnsCount")]
    assert counted["config"]["num_method"].endswith("-wasserstein")
    assert counted["config"]["cat_method"].endswith("-jensenshannon")
    assert set(INJECTED) <= set(result["drifted_columns"])


def _evidently_scores(reference: pd.DataFrame, current: pd.DataFrame, contract: DatasetContract) -> dict:
    """Evidently's own functions on the full columns, NaN and +-inf dropped as Evidently drops them."""
    from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
    from evidently.legacy.calculations.stattests.wasserstein_distance_norm import _wasserstein_distance_norm
    from evidently.legacy.core import ColumnType

    def clean(series: pd.Series) -> pd.Series:
        return series.replace([-np.inf, np.inf], np.nan).dropna()

    out = {}
    for col in contract.numeric_features:
        ref, cur = clean(reference[col].astype(float)), clean(current[col].astype(float))
        out[col] = _wasserstein_distance_norm(ref, cur, ColumnType.Numerical, 0.1)[0]
    for col in contract.categorical_features:
        ref, cur = clean(reference[col].astype(object)), clean(current[col].astype(object))
        out[col] = _jensenshannon(ref, cur, ColumnType.Categorical, 0.1)[0]
    return out


def test_scores_are_evidentlys_over_all_rows(contract: DatasetContract, tmp_path: Path) -> None:
    # The vectorised scores equal Evidently's own functions on every row (not on the report's sample),
    # with nulls and infinities dropped, unequal sizes, ties, and a level seen on one side only.
    reference = _reference(contract, seed=11, n=3000)
    current = _served(contract, seed=12, drifted=True, n=7001)
    current.loc[::97, "annual_income"] = np.nan
    current.loc[::89, "years_employed"] = np.inf
    reference.loc[::53, "savings_balance"] = -np.inf
    current.loc[::101, "region"] = None
    current.loc[::7, "loan_purpose"] = "crypto"
    result = compute_drift(
        reference, current, contract=contract, policy=POLICY, report_dir=tmp_path, report_rows=500
    )
    expected = _evidently_scores(reference, current, contract)
    for col in contract.feature_names:
        assert result["scores"][col] == pytest.approx(expected[col], rel=1e-9, abs=1e-12), col
    assert result["report_sample_rows"] == {"reference": 500, "current": 500}
    assert result["rows_current"] == 7001
    html = Path(result["report_html"]).read_text(encoding="utf-8")
    assert "over all 7,001 rows" in html  # the method named in the report says where the scores come from


def test_parquet_paths_are_read_with_categories(contract: DatasetContract, tmp_path: Path) -> None:
    reference = _reference(contract, seed=13, n=2000)
    current = _served(contract, seed=14, drifted=True, n=2000)
    reference.to_parquet(tmp_path / "reference.parquet")
    current.to_parquet(tmp_path / "current.parquet")
    from_files = compute_drift(
        tmp_path / "reference.parquet",
        tmp_path / "current.parquet",
        contract=contract,
        policy=POLICY,
        report_dir=tmp_path / "files",
    )
    from_frames = compute_drift(
        reference, current, contract=contract, policy=POLICY, report_dir=tmp_path / "frames"
    )
    assert from_files["scores"] == pytest.approx(from_frames["scores"], rel=1e-12)
    assert from_files["drifted_columns"] == from_frames["drifted_columns"] == INJECTED


def test_simulated_covariate_shift_is_found_exactly(contract: DatasetContract, tmp_path: Path) -> None:
    # The simulator's own truth: drift on DRIFT_COLUMNS from drift_from, nothing else.
    config = SimulatorConfig(rows_per_day=5000, drift_from=date(2026, 3, 4))
    reference = generate_day(date(2026, 3, 2), config, contract)  # a Monday before the shift
    current = generate_day(date(2026, 3, 4), config, contract)  # the Wednesday it starts
    result = compute_drift(reference, current, contract=contract, policy=POLICY, report_dir=tmp_path)
    assert result["drifted_columns"] == sorted(DRIFT_COLUMNS)


def test_missing_feature_columns_are_named(contract: DatasetContract, tmp_path: Path) -> None:
    reference = _reference(contract, n=50)
    current = _served(contract, seed=4, drifted=False, n=50).drop(columns=["region", "age"])
    with pytest.raises(ValueError, match=r"current frame lacks .*\['age', 'region'\]"):
        compute_drift(reference, current, contract=contract, policy=POLICY, report_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_non_distance_method_is_refused(contract: DatasetContract, tmp_path: Path) -> None:
    frame = _reference(contract, n=50)
    with pytest.raises(ValueError, match=r"drift\.cat_method='chisquare'"):
        compute_drift(
            frame, frame, contract=contract, policy=DriftPolicy(cat_method="chisquare"), report_dir=tmp_path
        )


def test_non_numeric_values_name_the_column(contract: DatasetContract, tmp_path: Path) -> None:
    reference = _reference(contract, n=50)
    current = _served(contract, seed=5, drifted=False, n=50).astype({"age": object})
    current.loc[3, "age"] = "forty"
    with pytest.raises(ValueError, match=r"current frame, column 'age': expected numbers"):
        compute_drift(reference, current, contract=contract, policy=POLICY, report_dir=tmp_path)


# --- retrain_decision -----------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DECISION_POLICY = DriftPolicy(min_drifted_columns=1, cooldown_hours=6, min_rows=500)


def _drift(columns: list[str], rows: int = 5000) -> dict:
    scores = {"age": 0.02, "credit_score": 0.04, "loan_purpose": 0.03, "region": 0.01}
    scores.update({c: 0.35 for c in columns})
    return {"drifted_columns": sorted(columns), "scores": scores, "threshold": 0.1, "rows_current": rows}


@pytest.mark.parametrize(
    ("drift", "policy", "last", "retrain", "why_has"),
    [
        pytest.param(
            _drift([]), DECISION_POLICY, None, False, ["no drift", "credit_score=0.040"], id="no-drift"
        ),
        pytest.param(
            _drift(["credit_score", "loan_purpose"]),
            DECISION_POLICY,
            None,
            True,
            ["2 column(s)", "credit_score=0.350", "loan_purpose=0.350"],
            id="drift-first-ever",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DECISION_POLICY,
            NOW - timedelta(hours=2),
            False,
            ["credit_score=0.350", "cooldown until 2026-03-01T16:00:00+00:00"],
            id="drift-within-cooldown",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DECISION_POLICY,
            NOW - timedelta(hours=6),
            True,
            ["credit_score=0.350"],
            id="drift-cooldown-just-over",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DECISION_POLICY,
            NOW - timedelta(hours=30),
            True,
            ["1 column(s)"],
            id="drift-after-cooldown",
        ),
        pytest.param(
            _drift(["credit_score"]),
            DriftPolicy(min_drifted_columns=2),
            None,
            False,
            ["credit_score=0.350", "below drift.min_drifted_columns=2"],
            id="below-min-drifted-columns",
        ),
        pytest.param(
            _drift(["credit_score"], rows=120),
            DECISION_POLICY,
            None,
            False,
            ["only 120 served rows", "min_rows is 500"],
            id="too-few-rows",
        ),
    ],
)
def test_retrain_decision(
    drift: dict, policy: DriftPolicy, last: datetime | None, retrain: bool, why_has: list[str]
) -> None:
    decision = retrain_decision(drift, policy, last_trigger_at=last, now=NOW)
    assert set(decision) == {"retrain", "why"}
    assert decision["retrain"] is retrain
    for fragment in why_has:
        assert fragment in decision["why"]


def test_retrain_decision_accepts_naive_and_offset_times() -> None:
    # 10:00 at +02:00 is 08:00 UTC; naive "now" is UTC: 4 h later, still inside the 6 h cooldown.
    last = datetime(2026, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    decision = retrain_decision(
        _drift(["age"]), DECISION_POLICY, last_trigger_at=last, now=datetime(2026, 3, 1, 12, 0)
    )
    assert decision["retrain"] is False
    assert "cooldown until 2026-03-01T14:00:00+00:00" in decision["why"]


# --- ledger -----------------------------------------------------------------------------------------------


def test_ledger_is_idempotent_per_monitor_run(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    assert last_retrain_trigger(lake) is None
    first = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    record_retrain_trigger(lake, "scheduled__2026-03-01T06:00:00+00:00", first, _drift(["age"]))
    # A retry of the same run, later and with other columns, changes nothing.
    record_retrain_trigger(
        lake, "scheduled__2026-03-01T06:00:00+00:00", first + timedelta(hours=1), _drift(["region"])
    )
    ledger = lake.root / "monitoring" / "retrain_triggers.json"
    entries = json.loads(ledger.read_text())
    assert len(entries) == 1
    assert entries[0]["drifted_columns"] == ["age"]
    assert entries[0]["scores"] == {"age": 0.35}
    assert last_retrain_trigger(lake) == first

    later = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    record_retrain_trigger(lake, "scheduled__2026-03-02T06:00:00+00:00", later, _drift(["region"]))
    assert len(json.loads(ledger.read_text())) == 2
    assert last_retrain_trigger(lake) == later


def test_corrupt_ledger_names_the_file(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    ledger = tmp_path / "monitoring" / "retrain_triggers.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="retrain_triggers.json"):
        last_retrain_trigger(lake)


# --- window_bounds ----------------------------------------------------------------------------------------

RUN_AFTER = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("run_after", "start", "end", "hours", "expected"),
    [
        pytest.param(
            RUN_AFTER,
            None,
            None,
            24,
            ("2026-02-28T12:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="default-window",
        ),
        pytest.param(
            RUN_AFTER,
            "",
            "",
            6,
            ("2026-03-01T06:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="empty-params-are-missing",
        ),
        pytest.param(
            RUN_AFTER,
            "2026-02-01T00:00:00Z",
            "2026-02-03T00:00:00+00:00",
            24,
            ("2026-02-01T00:00:00+00:00", "2026-02-03T00:00:00+00:00"),
            id="explicit-bounds-win",
        ),
        pytest.param(
            RUN_AFTER,
            "2026-02-01T02:00:00+02:00",
            "2026-02-01T12:00:00",
            24,
            ("2026-02-01T00:00:00+00:00", "2026-02-01T12:00:00+00:00"),
            id="offset-and-naive-to-utc",
        ),
        pytest.param(
            RUN_AFTER,
            "2026-03-01T00:00:00+00:00",
            None,
            24,
            ("2026-03-01T00:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="start-only-ends-at-run",
        ),
        pytest.param(
            RUN_AFTER,
            None,
            "2026-02-10",
            12,
            ("2026-02-09T12:00:00+00:00", "2026-02-10T00:00:00+00:00"),
            id="end-only",
        ),
        pytest.param(
            datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            None,
            None,
            1,
            ("2026-03-01T11:00:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="run-after-in-offset",
        ),
        pytest.param(
            datetime(2026, 3, 1, 12, 0),
            None,
            None,
            0.5,
            ("2026-03-01T11:30:00+00:00", "2026-03-01T12:00:00+00:00"),
            id="naive-run-after-is-utc",
        ),
    ],
)
def test_window_bounds(
    run_after: datetime, start: str | None, end: str | None, hours: float, expected: tuple[str, str]
) -> None:
    lo, hi = window_bounds(run_after, window_start=start, window_end=end, window_hours=hours)
    assert (lo.isoformat(), hi.isoformat()) == expected
    assert lo.tzinfo is UTC
    assert hi.tzinfo is UTC


@pytest.mark.parametrize(
    ("start", "end", "hours", "match"),
    [
        pytest.param("yesterday", None, 24, "param window_start='yesterday'", id="bad-start"),
        pytest.param(None, "2026-13-01", 24, "param window_end='2026-13-01'", id="bad-end"),
        pytest.param(
            "2026-03-01T00:00:00Z", "2026-02-01T00:00:00Z", 24, "start must be before end", id="reversed"
        ),
        pytest.param(None, None, 0, "window_hours=0", id="zero-hours"),
    ],
)
def test_window_bounds_rejects_bad_input(
    start: str | None, end: str | None, hours: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        window_bounds(RUN_AFTER, window_start=start, window_end=end, window_hours=hours)
