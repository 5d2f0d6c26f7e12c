"""Unit tests of the drift statistics: Evidently on synthetic windows with known drift.

Evidently costs ~10 s to import, so the reports are computed once per module (module-scoped fixtures).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from continuous_training.config import DatasetContract, DriftPolicy
from continuous_training.monitoring.drift import PREDICTION_COLUMN, compute_drift
from continuous_training.monitoring.report import drifted_count_from_report
from continuous_training.ops.simulate import DRIFT_COLUMNS, SimulatorConfig, generate_day

CONFIG_DIR = Path(__file__).resolve().parents[3] / "include" / "config"
POLICY = DriftPolicy()  # wasserstein / jensenshannon / 0.1, the shipped policy's values

# The drift injected into the drifted window, one column per kind.
MEAN_SHIFT = "credit_score"  # +0.6 std
SCALE_CHANGE = "debt_to_income"  # std x1.5, same mean
MIXTURE_WEIGHTS = "revolving_utilization"  # two components, weights 0.75/0.25 -> 0.4/0.6
CATEGORY_SHUFFLE = "loan_purpose"  # same levels, probabilities permuted
INJECTED = sorted([MEAN_SHIFT, SCALE_CHANGE, MIXTURE_WEIGHTS, CATEGORY_SHUFFLE])


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
    assert sorted(drifted_result["drifted_columns"]) == INJECTED
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


def test_the_most_drifted_column_leads_and_the_mail_subject_stays_short(drifted_result: dict) -> None:
    from continuous_training.alerts.mail import drift_mail

    scores = drifted_result["scores"]
    ranked = drifted_result["drifted_columns"]
    assert [scores[c] for c in ranked] == sorted((scores[c] for c in ranked), reverse=True)
    mail = drift_mail(
        drift={
            **drifted_result,
            "model_name": "m",
            "model_version": "3",
            "window_start": "a",
            "window_end": "b",
        },
        decision={"decision": "triggered", "why": "4 column(s) drifted", "train_run_id": "drift__run"},
        monitor_run_id="run",
        run_url="http://x/run",
        page_url="http://x/drift/run",
    )
    # Four drifted columns: the top three by score, then a count; the table lists all four in order.
    assert mail.subject == f"Drift in {', '.join(ranked[:3])} and 1 more (m v3): retraining"
    table = mail.html.split("<h3>", 1)[0]
    assert [table.index(f">{c}<") for c in ranked] == sorted(table.index(f">{c}<") for c in ranked)
    assert "Data quality" not in mail.html


def test_a_column_with_no_value_is_a_finding_not_a_silent_gap(
    contract: DatasetContract, tmp_path: Path
) -> None:
    from continuous_training.alerts.mail import drift_mail

    reference, current = _reference(contract, n=400), _served(contract, seed=4, drifted=True, n=400)
    column = next(c for c in contract.numeric_features if c not in INJECTED)
    current[column] = np.nan
    result = compute_drift(reference, current, contract=contract, policy=POLICY, report_dir=tmp_path)
    assert result["null_columns"] == {"current": [column], "reference": []}
    assert result["scores"][column] is None
    assert column not in result["drifted_columns"]
    assert result["drifted_columns"], "the injected drift is still found"
    mail = drift_mail(
        drift={**result, "model_name": "m", "model_version": "1", "window_start": "a", "window_end": "b"},
        decision={"decision": "cooldown", "why": "in cooldown until 2026-03-01T16:00:00+00:00"},
        monitor_run_id="run",
        run_url="http://x/run",
        page_url="http://x/drift/run",
    )
    assert f"{column}: no value at all in the served window (not judged)" in mail.html


@pytest.mark.parametrize(("share", "drifts"), [(0.02, True), (0.005, False)])
def test_a_new_category_above_the_floor_drifts_its_column_and_is_named(
    contract: DatasetContract, tmp_path: Path, share: float, drifts: bool
) -> None:
    from continuous_training.alerts.mail import drift_mail

    reference, current = _reference(contract, n=4000), _served(contract, seed=5, drifted=False, n=4000)
    column = next(c for c in contract.categorical_features if c not in INJECTED)
    rows = int(share * len(current))
    values = current[column].astype(object).to_numpy()
    values[:rows] = "crypto_kiosk"
    current[column] = values
    result = compute_drift(reference, current, contract=contract, policy=POLICY, report_dir=tmp_path)
    # Too rare to move the score past the threshold either way: the floor decides.
    assert result["scores"][column] < POLICY.threshold
    if drifts:
        assert result["unseen_categories"] == {
            column: [{"value": "crypto_kiosk", "rows": rows, "share": share}]
        }
        assert result["drifted_columns"] == [column]
        mail = drift_mail(
            drift={**result, "model_name": "m", "model_version": "1", "window_start": "a", "window_end": "b"},
            decision={"decision": "no_new_data", "why": "no validated day arrived"},
            monitor_run_id="run",
            run_url="http://x/run",
            page_url="http://x/drift/run",
        )
        assert "new category &#x27;crypto_kiosk&#x27; on 2.0% of rows" in mail.html
    else:
        assert result["unseen_categories"] == {}
        assert result["drifted_columns"] == []


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
    assert from_files["drifted_columns"] == from_frames["drifted_columns"]
    assert sorted(from_files["drifted_columns"]) == INJECTED


def test_simulated_covariate_shift_is_found_exactly(contract: DatasetContract, tmp_path: Path) -> None:
    # The simulator's own truth: drift on DRIFT_COLUMNS from drift_from, nothing else.
    config = SimulatorConfig(rows_per_day=5000, drift_from=date(2026, 3, 4))
    reference = generate_day(date(2026, 3, 2), config, contract)  # a Monday before the shift
    current = generate_day(date(2026, 3, 4), config, contract)  # the Wednesday it starts
    result = compute_drift(reference, current, contract=contract, policy=POLICY, report_dir=tmp_path)
    assert sorted(result["drifted_columns"]) == sorted(DRIFT_COLUMNS)


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
