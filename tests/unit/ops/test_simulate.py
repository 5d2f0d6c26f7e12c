"""The simulator: deterministic, inside the contract, realistic, and its knobs do exactly what they say."""

from __future__ import annotations

import json
import threading
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from continuous_training.config import DatasetContract, load_contract
from continuous_training.frames import coerce_to_contract, contract_dtypes, read_landing_csv
from continuous_training.lake import Lake
from continuous_training.ops.simulate import (
    BAD_BATCH_KINDS,
    DRIFT_COLUMNS,
    SimulatorConfig,
    client_requests,
    corrupt_batch,
    generate_day,
    land_day,
    landing_csv_bytes,
    send_traffic,
    to_json_rows,
)

MONDAY = date(2026, 10, 5)


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CT_LAKE", str(tmp_path / "lake"))


@pytest.fixture(scope="module")
def clean_day(contract: DatasetContract) -> pd.DataFrame:
    return generate_day(MONDAY, SimulatorConfig(seed=11), contract)


def _days(start: date, n: int, config: SimulatorConfig, contract: DatasetContract) -> pd.DataFrame:
    return pd.concat(
        [generate_day(start + timedelta(i), config, contract) for i in range(n)], ignore_index=True
    )


def test_same_config_gives_identical_frame_and_csv_bytes(contract: DatasetContract) -> None:
    config = SimulatorConfig(seed=5, rows_per_day=300)
    first = generate_day(MONDAY, config, contract)
    second = generate_day(MONDAY, SimulatorConfig(seed=5, rows_per_day=300), contract)
    pd.testing.assert_frame_equal(first, second)
    assert landing_csv_bytes(first) == landing_csv_bytes(second)
    other_seed = generate_day(MONDAY, SimulatorConfig(seed=6, rows_per_day=300), contract)
    assert not other_seed["annual_income"].equals(first["annual_income"])


def test_csv_round_trips_exactly_through_the_typing_rules(
    clean_day: pd.DataFrame, contract: DatasetContract, tmp_path: Path
) -> None:
    path = tmp_path / "day.csv"
    path.write_bytes(landing_csv_bytes(clean_day))
    assert path.read_text().splitlines()[1].split(",")[1].endswith("Z")  # ISO 8601 UTC timestamps
    typed, errors = coerce_to_contract(read_landing_csv(path), contract)
    assert errors == {}
    pd.testing.assert_frame_equal(typed, clean_day)


def test_clean_day_is_inside_the_contract(clean_day: pd.DataFrame, contract: DatasetContract) -> None:
    assert list(clean_day.columns) == contract.column_names
    assert clean_day.dtypes.astype(str).to_dict() == contract_dtypes(contract)
    assert not clean_day.isna().any().any()
    for col in contract.columns:
        values = clean_day[col.name]
        if col.min is not None:
            assert values.min() >= col.min, col.name
        if col.max is not None:
            assert values.max() <= col.max, col.name
        if col.values is not None:
            assert set(values) <= set(col.values), col.name
    assert clean_day["application_id"].is_unique
    assert clean_day["application_id"].str.fullmatch(r"A20261005-\d{6}").all()
    day_start = pd.Timestamp("2026-10-05", tz="UTC")
    assert (clean_day["applied_at"] >= day_start).all()
    assert (clean_day["applied_at"] < day_start + pd.Timedelta(days=1)).all()
    assert clean_day["applied_at"].is_monotonic_increasing


def test_application_ids_are_unique_across_days(contract: DatasetContract) -> None:
    frames = _days(MONDAY, 3, SimulatorConfig(seed=1, rows_per_day=200), contract)
    assert frames["application_id"].is_unique


def test_correlations_are_realistic(contract: DatasetContract) -> None:
    df = _days(MONDAY, 4, SimulatorConfig(seed=2), contract)
    corr = df[contract.numeric_features].astype(float).corr()
    assert corr.loc["annual_income", "loan_amount"] > 0.4
    assert corr.loc["annual_income", "savings_balance"] > 0.2
    assert corr.loc["credit_score", "num_late_payments"] < -0.4
    assert corr.loc["age", "credit_history_years"] > 0.7
    shares = df["home_ownership"].value_counts(normalize=True)
    assert shares.max() > 2 * shares.min()  # categories are not uniform


def test_weekday_seasonality(contract: DatasetContract) -> None:
    config = SimulatorConfig(seed=3, rows_per_day=400)
    counts = pd.Series(
        {MONDAY + timedelta(i): len(generate_day(MONDAY + timedelta(i), config, contract)) for i in range(28)}
    )
    weekdays = counts[[d.weekday() < 5 for d in counts.index]]
    weekends = counts[[d.weekday() >= 5 for d in counts.index]]
    assert 0.9 * 400 <= weekdays.mean() <= 1.1 * 400
    assert weekends.max() < weekdays.min()
    assert weekends.mean() < 0.5 * weekdays.mean()


def test_label_rate_and_learnable_nonlinear_signal(contract: DatasetContract) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    train = _days(MONDAY, 6, SimulatorConfig(seed=4), contract)
    test = _days(MONDAY + timedelta(14), 3, SimulatorConfig(seed=4), contract)
    assert 0.10 <= train["defaulted"].mean() <= 0.20

    def features(df: pd.DataFrame) -> pd.DataFrame:
        x = df[contract.feature_names].copy()
        x[contract.numeric_features] = x[contract.numeric_features].astype(float)
        for col in contract.categorical_features:
            x[col] = pd.Categorical(x[col], categories=contract.column(col).values)
        return x

    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    model.fit(features(train), train["defaulted"].astype(int))
    auc = roc_auc_score(test["defaulted"].astype(int), model.predict_proba(features(test))[:, 1])
    assert 0.75 <= auc <= 0.90


def test_drift_columns_are_three_numeric_and_one_categorical(contract: DatasetContract) -> None:
    numeric = [c for c in DRIFT_COLUMNS if c in contract.numeric_features]
    categorical = [c for c in DRIFT_COLUMNS if c in contract.categorical_features]
    assert len(numeric) == 3
    assert len(categorical) == 1
    assert len(DRIFT_COLUMNS) == 4


def _normed_wasserstein(reference: pd.Series, current: pd.Series) -> float:
    ref = reference.astype(float).to_numpy()
    return float(wasserstein_distance(ref, current.astype(float).to_numpy()) / max(np.std(ref), 0.001))


def _js_distance(reference: pd.Series, current: pd.Series) -> float:
    levels = sorted(set(reference) | set(current))
    p = reference.value_counts(normalize=True).reindex(levels, fill_value=0.0)
    q = current.value_counts(normalize=True).reindex(levels, fill_value=0.0)
    return float(jensenshannon(p.to_numpy(), q.to_numpy()))


def _drift_scores(
    reference: pd.DataFrame, current: pd.DataFrame, contract: DatasetContract
) -> dict[str, float]:
    scores = {c: _normed_wasserstein(reference[c], current[c]) for c in contract.numeric_features}
    scores.update({c: _js_distance(reference[c], current[c]) for c in contract.categorical_features})
    return scores


def test_covariate_shift_changes_exactly_drift_columns(contract: DatasetContract) -> None:
    # Evidently's defaults above 1,000 reference rows: normed Wasserstein / Jensen-Shannon, threshold 0.1.
    drift_day = MONDAY + timedelta(21)
    plain = SimulatorConfig(seed=8)
    drifted = SimulatorConfig(seed=8, drift_from=drift_day)
    reference = _days(MONDAY, 4, plain, contract).head(5000)
    current = _days(drift_day, 4, drifted, contract).head(5000)
    control = _days(drift_day, 4, plain, contract).head(5000)
    assert len(reference) == len(current) == 5000

    shifted = _drift_scores(reference, current, contract)
    quiet = _drift_scores(reference, control, contract)
    flagged = sorted(c for c, s in shifted.items() if s >= 0.1)
    assert flagged == sorted(DRIFT_COLUMNS), shifted
    assert min(shifted[c] for c in DRIFT_COLUMNS) >= 0.15, shifted
    assert max(s for c, s in shifted.items() if c not in DRIFT_COLUMNS) < 0.06, shifted
    assert max(quiet.values()) < 0.06, quiet

    # The kinds of shift: a mean shift, a scale change at the same mean, a mixture-weight change.
    ref_rate, cur_rate = reference["interest_rate"], current["interest_rate"]
    assert cur_rate.mean() - ref_rate.mean() == pytest.approx(1.5, abs=0.15)
    assert cur_rate.std() / ref_rate.std() == pytest.approx(1.0, abs=0.1)
    ref_util, cur_util = reference["revolving_utilization"], current["revolving_utilization"]
    assert abs(cur_util.mean() - ref_util.mean()) < 0.02
    assert cur_util.std() / ref_util.std() == pytest.approx(1.5, abs=0.12)
    low_ref = (reference["savings_balance"] <= 1500).mean()
    low_cur = (current["savings_balance"] <= 1500).mean()
    assert low_cur - low_ref == pytest.approx(0.25, abs=0.05)
    assert current["application_channel"].value_counts(normalize=True)["broker"] > 0.2


def test_drift_leaves_every_other_column_of_a_day_untouched(contract: DatasetContract) -> None:
    plain = generate_day(MONDAY, SimulatorConfig(seed=9, rows_per_day=500), contract)
    drifted = generate_day(MONDAY, SimulatorConfig(seed=9, rows_per_day=500, drift_from=MONDAY), contract)
    changed = sorted(c for c in contract.column_names if not plain[c].equals(drifted[c]))
    # The label follows the features (covariate shift: P(label | features) is unchanged).
    assert changed == sorted([*DRIFT_COLUMNS, "defaulted"])
    before = generate_day(
        MONDAY, SimulatorConfig(seed=9, rows_per_day=500, drift_from=MONDAY + timedelta(1)), contract
    )
    pd.testing.assert_frame_equal(before, plain)
    zero = generate_day(
        MONDAY, SimulatorConfig(seed=9, rows_per_day=500, drift_from=MONDAY, drift_strength=0), contract
    )
    pd.testing.assert_frame_equal(zero, plain)


def test_concept_drift_changes_labels_not_features(contract: DatasetContract) -> None:
    config = SimulatorConfig(seed=10)
    plain = _days(MONDAY, 2, config, contract)
    shifted = _days(MONDAY, 2, SimulatorConfig(seed=10, concept_drift_from=MONDAY), contract)
    pd.testing.assert_frame_equal(plain.drop(columns="defaulted"), shifted.drop(columns="defaulted"))
    south = plain["region"] == "south"
    assert shifted.loc[south, "defaulted"].mean() > plain.loc[south, "defaulted"].mean() + 0.08


def _count_parse_failures(df: pd.DataFrame, contract: DatasetContract, tmp_path: Path) -> dict[str, int]:
    path = tmp_path / "bad.csv"
    path.write_bytes(landing_csv_bytes(df))
    return coerce_to_contract(read_landing_csv(path), contract)[1]


@pytest.mark.parametrize("kind", BAD_BATCH_KINDS)
def test_each_bad_kind_produces_its_defect(
    kind: str, clean_day: pd.DataFrame, contract: DatasetContract, tmp_path: Path
) -> None:
    bad = corrupt_batch(clean_day, kind, seed=1)
    assert bad is not clean_day
    n = len(clean_day)
    if kind == "missing_column":
        missing = set(clean_day.columns) - set(bad.columns)
        assert len(missing) == 1
        assert missing <= set(contract.feature_names)
        assert len(bad) == n
    elif kind == "wrong_type":
        errors = _count_parse_failures(bad, contract, tmp_path)
        assert len(errors) == 1
        (column,) = errors
        assert column in contract.numeric_features
        assert 0.15 * n <= errors[column] <= 0.25 * n
    elif kind == "nulls":
        nulls = bad.isna().sum()
        hit = nulls[nulls > 0]
        assert len(hit) == 2
        assert all(0.04 * n <= v <= 0.11 * n for v in hit)
        assert not set(hit.index) & {contract.key, contract.timestamp, contract.target}
    elif kind == "out_of_range":
        assert {150, -3} <= set(bad["age"])
        assert 1200 in set(bad["credit_score"])
        untouched = [c for c in contract.column_names if c not in ("age", "credit_score")]
        pd.testing.assert_frame_equal(bad[untouched], clean_day[untouched])
    elif kind == "duplicates":
        duplicated = bad["application_id"].duplicated()
        assert 0.04 * n <= duplicated.sum() <= 0.06 * n
        assert len(bad.drop_duplicates()) == n  # whole rows repeated
    elif kind == "empty_file":
        assert len(bad) == 0
        assert list(bad.columns) == list(clean_day.columns)
        assert landing_csv_bytes(bad).decode().splitlines() == [",".join(clean_day.columns)]
    assert corrupt_batch(clean_day, kind, seed=1).equals(bad)  # deterministic


def test_unknown_bad_kind_is_refused(clean_day: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="not one of"):
        corrupt_batch(clean_day, "gremlins", seed=1)
    with pytest.raises(ValueError, match="2026-10-05"):
        SimulatorConfig(bad_days={"2026-10-05": "gremlins"})


def test_land_day_writes_deterministic_bytes_once(tmp_path: Path) -> None:
    lake = Lake(tmp_path / "lake")
    config = SimulatorConfig(seed=12, rows_per_day=100)
    (path,) = land_day(lake, MONDAY, config)
    assert path == lake.landing("2026-10-05") / "applications-2026-10-05.csv"
    stat = path.stat()
    assert land_day(lake, MONDAY, config) == [path]
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert path.stat().st_ino == stat.st_ino
    other = Lake(tmp_path / "other")
    assert land_day(other, MONDAY, config)[0].read_bytes() == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_land_day_applies_label_delay_and_bad_days(tmp_path: Path, contract: DatasetContract) -> None:
    lake = Lake(tmp_path / "lake")
    config = SimulatorConfig(
        seed=13, rows_per_day=100, label_delay_days=2, bad_days={"2026-10-05": "empty_file"}
    )
    (path,) = land_day(lake, MONDAY + timedelta(2), config)
    assert path == lake.landing("2026-10-05") / "applications-2026-10-05.csv"
    assert len(read_landing_csv(path)) == 0
    (next_path,) = land_day(lake, MONDAY + timedelta(3), config)
    landed = coerce_to_contract(read_landing_csv(next_path), contract)[0]
    pd.testing.assert_frame_equal(landed, generate_day(MONDAY + timedelta(1), config, contract))


def test_client_requests_and_json_rows(contract: DatasetContract) -> None:
    config = SimulatorConfig(seed=14, rows_per_day=50, drift_from=MONDAY)
    rows = client_requests(MONDAY, config, contract)
    assert "defaulted" not in rows.columns
    assert {"application_id", "applied_at", *contract.feature_names} == set(rows.columns)
    pd.testing.assert_frame_equal(rows, generate_day(MONDAY, config, contract).drop(columns="defaulted"))
    records = to_json_rows(rows)
    assert len(records) == len(rows)
    first = json.loads(json.dumps(records[0]))
    assert type(first["age"]) is int
    assert type(first["annual_income"]) is float
    assert type(first["region"]) is str
    assert pd.Timestamp(first["applied_at"]) == rows["applied_at"].iloc[0]


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    bodies: list[dict]
    peers: set[tuple[str, int]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append({"path": self.path, **body})
        self.peers.add(self.client_address)
        ids = [r["application_id"] for r in body["rows"]]
        status = 500 if "A20261005-000007" in ids else 200
        payload = json.dumps({"n": len(ids)} if status == 200 else {"detail": "boom"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_send_traffic_posts_batches_and_counts_failures(contract: DatasetContract) -> None:
    rows = client_requests(MONDAY, SimulatorConfig(seed=15, rows_per_day=40), contract)
    handler = type("Handler", (_Recorder,), {"bodies": [], "peers": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        stats = send_traffic(url, rows, batch_size=10)
    finally:
        server.shutdown()
        server.server_close()
    expected_requests = -(-len(rows) // 10)
    assert stats["requests"] == expected_requests == len(handler.bodies)
    assert stats["rows"] == len(rows)
    assert stats["failed_requests"] == 1
    assert stats["failed_rows"] == 10
    assert stats["errors"][0]["status"] == 500
    assert "boom" in stats["errors"][0]["error"]
    assert all(b["path"] == "/predict" for b in handler.bodies)
    sent = [r["application_id"] for b in handler.bodies for r in b["rows"]]
    assert sent == rows["application_id"].tolist()
    assert len(handler.peers) == 1  # one keep-alive connection


def test_send_traffic_records_connection_errors() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    rows = client_requests(MONDAY, SimulatorConfig(seed=16, rows_per_day=20), load_contract()).head(7)
    stats = send_traffic(f"http://127.0.0.1:{port}", rows, batch_size=3, timeout=2.0)
    assert stats["requests"] == 3
    assert stats["failed_requests"] == 3
    assert stats["failed_rows"] == 7
    assert stats["errors"][0]["status"] is None
    assert "ConnectError" in stats["errors"][0]["error"]
