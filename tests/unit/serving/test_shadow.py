"""Shadow scoring and the release columns of the prediction log, against a real MLflow server and real models.

The endpoint tests register real tiny pipelines under a fresh model name per test (signed as the train DAG
would), point ``champion`` and ``challenger`` at them and read back what the prediction log holds. The
failing challenger is a real model too: a pipeline whose one-hot encoder refuses categories it was not
built with (``handle_unknown="error"``), as a challenger trained with a stricter encoder would, so it
fails only on requests that carry such a value. The :class:`ShadowScorer` tests drive the scorer without
its thread (it drains on ``stop()``) to reach the full-queue path and batching deterministically.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder
from test_app import LOOPBACK_CLIENT, PASSED_GATE, expected_scores, fit_pipeline, records

from continuous_training.alerts.mail import model_refused_event_key
from continuous_training.config import load_contract
from continuous_training.lake import Lake
from continuous_training.model.registry import sign_version
from continuous_training.model.train import SKOPS_TRUSTED_TYPES
from continuous_training.ops.mailsink import read_mail
from continuous_training.predlog import PredictionLog, read_predictions
from continuous_training.serving.app import MODEL_NAME_HEADER, MODEL_VERSION_HEADER, create_app
from continuous_training.serving.holder import ServedModel
from continuous_training.serving.scorer import compile_scorer
from continuous_training.serving.shadow import NON_FINITE, ShadowScorer
from continuous_training.settings import load_settings

CONTRACT = load_contract()
FEATURES = CONTRACT.feature_names
KEY = CONTRACT.key
#: A category no model was built with: the picky challenger raises on it, quoting it in its message.
UNSEEN = "zqx_canary_purpose"


def picky_pipeline(synthetic_rows) -> Pipeline:
    """A real model that fails on unseen categories: one-hot encoding with ``handle_unknown="error"``."""
    frame = synthetic_rows(300, 3)
    label = ((frame["credit_score"] < 600) | (frame["region"] == "north")).astype(int)
    categorical = [c for c in CONTRACT.features if c.type == "category"]
    encoder = OneHotEncoder(
        categories=[list(c.values) for c in categorical], handle_unknown="error", sparse_output=False
    )
    columns = ColumnTransformer(
        [
            ("onehot", encoder, [c.name for c in categorical]),
            ("numbers", "passthrough", CONTRACT.numeric_features),
        ]
    )
    model = make_pipeline(columns, HistGradientBoostingClassifier(max_iter=10, random_state=0))
    return model.fit(frame[FEATURES], label)


@pytest.fixture(scope="module")
def shadow_models(mlflow_server: str, synthetic_rows) -> dict[str, Any]:
    """Three logged models: ``first`` and ``second`` (different scores) and ``picky`` (fails on unseen
    categories), plus the fitted pipelines."""
    mlflow.set_tracking_uri(mlflow_server)
    fitted = {
        "first": fit_pipeline(synthetic_rows, 1),
        "second": fit_pipeline(synthetic_rows, 2, flip=True),
        "picky": picky_pipeline(synthetic_rows),
    }
    uris = {}
    experiment = MlflowClient(mlflow_server).create_experiment(f"shadow_models_{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(experiment_id=experiment):
        for label, model in fitted.items():
            info = mlflow.sklearn.log_model(
                model, name=label, skops_trusted_types=SKOPS_TRUSTED_TYPES, pip_requirements=["scikit-learn"]
            )
            uris[label] = info.model_uri
    return {**fitted, "uris": uris, "client": MlflowClient(mlflow_server)}


def register(models: dict[str, Any], name: str, label: str, *, signed: bool = True) -> str:
    version = str(mlflow.register_model(models["uris"][label], name).version)
    if signed:
        sign_version(name, version, verdict=PASSED_GATE)
    return version


def set_alias(models: dict[str, Any], name: str, alias: str, version: str) -> None:
    models["client"].set_registered_model_alias(name, alias, version)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mlflow_server: str) -> dict[str, Any]:
    """An endpoint of a fresh model name, its own lake, polling fast; the shipped policy (share 1.0)."""
    name = f"shadow_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CT_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("CT_MODEL_NAME", name)
    monkeypatch.setenv("CT_ENDPOINT_POLL_SECONDS", "0.2")
    monkeypatch.setenv("CT_ENDPOINT_FLUSH_SECONDS", "0.2")
    return {"name": name, "lake": Lake(tmp_path / "lake"), "settings": load_settings()}


def _logged(lake: Lake, since: datetime, **kwargs: Any) -> pd.DataFrame:
    return read_predictions(
        lake, since - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=1), **kwargs
    )


def _post(client: TestClient, frame: pd.DataFrame, request_id: str) -> Any:
    return client.post("/predict", json={"rows": records(frame)}, headers={"X-Request-ID": request_id})


# ------------------------------------------------------------------------------------ the endpoint


def test_shadow_rows_carry_both_scores_and_both_versions(
    env: dict[str, Any], shadow_models: dict[str, Any], synthetic_rows, wait_for
) -> None:
    name, lake = env["name"], env["lake"]
    first, second = register(shadow_models, name, "first"), register(shadow_models, name, "second")
    set_alias(shadow_models, name, "champion", first)
    set_alias(shadow_models, name, "challenger", second)
    requests = {f"both-{i}": synthetic_rows(n, seed=40 + i) for i, n in enumerate((1, 7, 1, 25, 3))}
    started = datetime.now(UTC)
    with TestClient(create_app(env["settings"]), client=LOOPBACK_CLIENT) as client:
        health = client.get("/health").json()
        assert (health["model_version"], health["challenger_version"]) == (first, second)
        assert health["shadow"]["active"] is True
        assert health["shadow"]["share"] == 1.0
        for request_id, frame in requests.items():
            response = _post(client, frame, request_id)
            assert response.status_code == 200, response.text
            assert response.headers[MODEL_NAME_HEADER] == name
            assert response.headers[MODEL_VERSION_HEADER] == first
            assert response.json()["model_version"] == first
            np.testing.assert_allclose(
                response.json()["predictions"], expected_scores(shadow_models["first"], frame), rtol=1e-12
            )
        total = sum(len(f) for f in requests.values())
        wait_for(
            lambda: client.get("/health").json()["shadow"]["scored_rows"] == total, 30, "the shadow rows"
        )
        shadow = client.get("/health").json()["shadow"]
        assert (shadow["dropped_rows"], shadow["failed_rows"], shadow["last_error"]) == (0, 0, None)

    logged = _logged(lake, started)
    assert len(logged) == total
    assert (logged["model_version"] == first).all()
    assert (logged["challenger_version"] == second).all()
    assert logged["challenger_error"].isna().all()
    assert logged["error"].isna().all()
    for request_id, frame in requests.items():
        rows = logged[logged["request_id"] == request_id].set_index("row_id").loc[frame[KEY]]
        np.testing.assert_allclose(rows["score"], expected_scores(shadow_models["first"], frame), rtol=1e-12)
        np.testing.assert_allclose(
            rows["challenger_score"], expected_scores(shadow_models["second"], frame), rtol=1e-12
        )
        # One server-side latency per request, on each of its rows.
        assert rows["latency_ms"].nunique() == 1
        assert rows["latency_ms"].iloc[0] > 0


def test_no_shadow_without_a_challenger_or_when_it_is_the_champion(
    env: dict[str, Any], shadow_models: dict[str, Any], synthetic_rows
) -> None:
    name, lake = env["name"], env["lake"]
    first = register(shadow_models, name, "first")
    set_alias(shadow_models, name, "champion", first)
    started = datetime.now(UTC)
    with TestClient(create_app(env["settings"]), client=LOOPBACK_CLIENT) as client:
        health = client.get("/health").json()
        assert health["challenger_version"] is None
        assert health["shadow"]["active"] is False
        assert health["shadow"]["last_error"] is None  # no challenger alias is the normal state
        assert _post(client, synthetic_rows(3, seed=50), "absent").status_code == 200

        set_alias(shadow_models, name, "challenger", first)
        admin = {"Authorization": f"Bearer {_admin_token(env)}"}
        health = client.post("/reload", headers=admin).json()
        assert (health["challenger_version"], health["shadow"]["active"]) == (first, False)
        # The challenger is the version the champion serves: the loaded model is shared, not loaded twice.
        app = client.app
        assert app.state.challenger.current is app.state.holder.current
        assert _post(client, synthetic_rows(2, seed=51), "same").status_code == 200
        assert client.get("/health").json()["shadow"]["scored_rows"] == 0

    logged = _logged(lake, started)
    assert sorted(logged["request_id"].unique()) == ["absent", "same"]
    assert logged["challenger_version"].isna().all()
    assert logged["challenger_score"].isna().all()
    assert logged["challenger_error"].isna().all()


def _admin_token(env: dict[str, Any]) -> str:
    from continuous_training.credentials import endpoint_tokens

    return endpoint_tokens(env["settings"])["admin_token"]


def test_a_failing_challenger_never_changes_the_champions_answers(
    env: dict[str, Any], shadow_models: dict[str, Any], synthetic_rows, wait_for
) -> None:
    name, lake = env["name"], env["lake"]
    first, picky = register(shadow_models, name, "first"), register(shadow_models, name, "picky")
    set_alias(shadow_models, name, "champion", first)
    set_alias(shadow_models, name, "challenger", picky)
    requests = {f"req-{i}": synthetic_rows(4, seed=60 + i) for i in range(6)}
    poisoned = {"req-1", "req-4"}
    for request_id in poisoned:
        requests[request_id].loc[2, "loan_purpose"] = UNSEEN  # the champion scores it; the picky one raises
    started = datetime.now(UTC)
    with TestClient(create_app(env["settings"]), client=LOOPBACK_CLIENT) as client:
        assert client.get("/health").json()["shadow"]["active"] is True
        for request_id, frame in requests.items():
            response = _post(client, frame, request_id)
            assert response.status_code == 200, response.text
            assert response.headers[MODEL_VERSION_HEADER] == first
            # The same scores as without shadow scoring: the champion's own.
            np.testing.assert_allclose(
                response.json()["predictions"], expected_scores(shadow_models["first"], frame), rtol=1e-12
            )
        wait_for(
            lambda: client.get("/health").json()["shadow"]["failed_rows"] == 4 * len(poisoned),
            30,
            "the challenger's failures to be logged",
        )
        wait_for(lambda: client.get("/health").json()["shadow"]["scored_rows"] == 16, 30, "the scored rows")

    logged = _logged(lake, started)
    assert len(logged) == 24
    assert (logged["challenger_version"] == picky).all()
    failed = logged[logged["request_id"].isin(poisoned)]
    assert failed["challenger_score"].isna().all()
    # Every row of a failed request carries the error: the class and the endpoint's words, never the input.
    assert failed["challenger_error"].str.startswith("ValueError: ").all()
    assert not failed["challenger_error"].str.contains(UNSEEN).any()
    assert failed["error"].isna().all()  # the champion served these rows
    fine = logged[~logged["request_id"].isin(poisoned)]
    assert fine["challenger_error"].isna().all()
    for request_id in set(requests) - poisoned:
        frame = requests[request_id]
        rows = fine[fine["request_id"] == request_id].set_index("row_id").loc[frame[KEY]]
        np.testing.assert_allclose(
            rows["challenger_score"], expected_scores(shadow_models["picky"], frame), rtol=1e-12
        )


def test_a_refused_challenger_is_reported_as_such_and_the_champion_serves_on(
    env: dict[str, Any], shadow_models: dict[str, Any], synthetic_rows, smtp_sink: Path
) -> None:
    name = env["name"]
    first = register(shadow_models, name, "first")
    unsigned = register(shadow_models, name, "second", signed=False)  # registered by hand: no provenance
    set_alias(shadow_models, name, "champion", first)
    set_alias(shadow_models, name, "challenger", unsigned)
    with TestClient(create_app(env["settings"]), client=LOOPBACK_CLIENT) as client:
        health = client.get("/health").json()
        response = _post(client, synthetic_rows(2, seed=70), "refused-challenger")
    assert (health["status"], health["model_version"], health["last_error"]) == ("ok", first, None)
    assert health["challenger_version"] is None
    assert health["shadow"]["active"] is False
    error = health["shadow"]["last_error"]
    assert error.startswith(f"refused challenger {name} version {unsigned} (not shadow-scored; ")
    assert f"the champion is unaffected and keeps serving version {first}" in error
    assert response.status_code == 200
    assert response.headers[MODEL_VERSION_HEADER] == first

    (mail,) = [m for m in read_mail(smtp_sink) if m["X-CT-Event"] == model_refused_event_key(name, unsigned)]
    assert mail["Subject"] == (
        f"[ct] Challenger refused: {name} v{unsigned} will not be shadow-scored (champion v{first} unaffected)"
    )
    body = mail.get_body(preferencelist=("html",)).get_content()
    assert "The champion is unaffected" in body


def test_a_failing_champion_logs_error_rows_left_out_by_default(
    env: dict[str, Any], shadow_models: dict[str, Any], synthetic_rows
) -> None:
    name, lake = env["name"], env["lake"]
    picky = register(shadow_models, name, "picky")
    set_alias(shadow_models, name, "champion", picky)
    ok, bad = synthetic_rows(2, seed=80), synthetic_rows(3, seed=81)
    bad.loc[1, "loan_purpose"] = UNSEEN
    started = datetime.now(UTC)
    with TestClient(create_app(env["settings"]), client=LOOPBACK_CLIENT) as client:
        assert _post(client, ok, "fine").status_code == 200
        response = _post(client, bad, "broken")
    assert response.status_code == 500
    assert response.json()["error"].startswith("prediction failed")
    assert UNSEEN not in response.text
    assert "Traceback" not in response.text
    assert response.headers[MODEL_VERSION_HEADER] == picky  # the version that failed to score it

    served = _logged(lake, started)
    assert served["request_id"].unique().tolist() == ["fine"]
    everything = _logged(lake, started, include_errors=True)
    failed = everything[everything["request_id"] == "broken"]
    assert len(failed) == 3
    assert (failed["error"] == "ValueError").all()
    assert failed["score"].isna().all()
    assert (failed["model_version"] == picky).all()
    assert (failed["latency_ms"] > 0).all()
    assert everything.loc[everything["request_id"] == "fine", "error"].isna().all()


# -------------------------------------------------------------------------- the scorer, no thread


def _served(model: Pipeline, version: str, scorer: Any = None) -> ServedModel:
    compiled, kind = compile_scorer(model, CONTRACT)
    return ServedModel("m", version, model, datetime.now(UTC), scorer or compiled, kind)


@pytest.fixture
def scorer_parts(tmp_path: Path, synthetic_rows) -> dict[str, Any]:
    """A prediction log, a champion and a challenger of real fitted pipelines (loaded in memory)."""
    first, second = fit_pipeline(synthetic_rows, 1), fit_pipeline(synthetic_rows, 2, flip=True)
    return {
        "predlog": PredictionLog(
            Lake(tmp_path / "lake"), flush_seconds=60, max_rows=100_000, contract=CONTRACT
        ),
        "champion": _served(first, "1"),
        "challenger": _served(second, "2"),
        "first": first,
        "second": second,
        "lake": Lake(tmp_path / "lake"),
    }


def _log(
    shadow: ShadowScorer, served: ServedModel, frame: pd.DataFrame, request_id: str, feature_columns
) -> None:
    columns = {**feature_columns(frame), KEY: frame[KEY].to_numpy(object)}
    scores = served.scorer(columns, len(frame))
    shadow.log(
        columns,
        len(frame),
        scores,
        request_id=request_id,
        served=served,
        served_at=datetime.now(UTC),
        latency_ms=1.5,
    )


def test_a_full_queue_logs_the_request_at_once_without_shadow(
    scorer_parts, synthetic_rows, feature_columns
) -> None:
    plog, champion, challenger = scorer_parts["predlog"], scorer_parts["champion"], scorer_parts["challenger"]
    shadow = ShadowScorer(plog, lambda: challenger, 1.0, features=FEATURES, max_pending_requests=2)
    frames = {f"q-{i}": synthetic_rows(3, seed=90 + i) for i in range(3)}
    started = datetime.now(UTC)
    for request_id, frame in frames.items():
        _log(shadow, champion, frame, request_id, feature_columns)
    # Not started: the first two wait for the challenger; the third found the queue full.
    assert (shadow.pending_rows, shadow.dropped_rows) == (6, 3)
    assert plog.buffered_rows == 3  # logged at once, without waiting for anything
    shadow.stop()  # drains what was pending, in one batched call
    assert (shadow.scored_rows, shadow.failed_rows, shadow.pending_rows) == (6, 0, 0)
    plog.flush()

    logged = _logged(scorer_parts["lake"], started)
    dropped = logged[logged["request_id"] == "q-2"]
    assert len(dropped) == 3
    assert dropped["challenger_version"].isna().all()
    assert dropped["challenger_score"].isna().all()
    for request_id in ("q-0", "q-1"):
        frame = frames[request_id]
        rows = logged[logged["request_id"] == request_id].set_index("row_id").loc[frame[KEY]]
        assert (rows["challenger_version"] == "2").all()
        np.testing.assert_allclose(
            rows["challenger_score"], expected_scores(scorer_parts["second"], frame), rtol=1e-12
        )
        np.testing.assert_allclose(rows["score"], expected_scores(scorer_parts["first"], frame), rtol=1e-12)
        assert (rows["latency_ms"] == 1.5).all()


def test_a_failed_batch_is_pinned_on_the_requests_that_cause_it(
    scorer_parts, synthetic_rows, feature_columns
) -> None:
    picky = picky_pipeline(synthetic_rows)
    plog, champion = scorer_parts["predlog"], scorer_parts["champion"]
    shadow = ShadowScorer(plog, lambda: _served(picky, "3"), 1.0, features=FEATURES)
    frames = {f"b-{i}": synthetic_rows(2, seed=100 + i) for i in range(4)}
    frames["b-2"].loc[0, "loan_purpose"] = UNSEEN
    started = datetime.now(UTC)
    for request_id, frame in frames.items():
        _log(shadow, champion, frame, request_id, feature_columns)
    shadow.stop()  # one batch of the four requests: it fails, then each is scored alone
    assert (shadow.scored_rows, shadow.failed_rows) == (6, 2)
    plog.flush()
    logged = _logged(scorer_parts["lake"], started)
    by_request = logged.groupby("request_id")["challenger_error"].apply(lambda s: s.notna().all()).to_dict()
    assert by_request == {"b-0": False, "b-1": False, "b-2": True, "b-3": False}
    good = logged[logged["request_id"] == "b-3"].set_index("row_id").loc[frames["b-3"][KEY]]
    np.testing.assert_allclose(good["challenger_score"], expected_scores(picky, frames["b-3"]), rtol=1e-12)


def test_wrong_shapes_and_non_finite_challenger_scores_fail_only_their_rows(
    scorer_parts, synthetic_rows, feature_columns
) -> None:
    # No real model returns these: the challenger here is the real compiled scorer of a real model,
    # wrapped to corrupt its output (one score too many when a row is aged 99; NaN for a credit score
    # below 500).
    plog, champion, real = scorer_parts["predlog"], scorer_parts["champion"], scorer_parts["challenger"]

    def corrupted(columns: dict[str, np.ndarray], n_rows: int) -> np.ndarray:
        scores = real.scorer(columns, n_rows)
        if (columns["age"] == 99).any():
            return np.append(scores, 0.5)
        return np.where(columns["credit_score"] < 500, np.nan, scores)

    shadow = ShadowScorer(
        plog, lambda: _served(scorer_parts["second"], "2", corrupted), 1.0, features=FEATURES
    )
    low = synthetic_rows(3, seed=110).assign(age=40.0, credit_score=[450.0, 700.0, 800.0])
    aged = synthetic_rows(5, seed=111).assign(age=99.0)
    started = datetime.now(UTC)
    _log(shadow, champion, low, "non-finite", feature_columns)
    _log(shadow, champion, aged, "wrong-shape", feature_columns)
    shadow.stop()  # one batch of both fails on its shape; then each request alone
    plog.flush()
    logged = _logged(scorer_parts["lake"], started).set_index("row_id")
    rows = logged.loc[low[KEY]]
    assert rows["challenger_error"].tolist() == [NON_FINITE, None, None]
    assert rows["challenger_score"].isna().tolist() == [True, False, False]
    np.testing.assert_allclose(
        rows["challenger_score"].iloc[1:], expected_scores(scorer_parts["second"], low)[1:], rtol=1e-12
    )
    wrong = logged.loc[aged[KEY]]
    assert wrong["challenger_error"].str.startswith("ValueError: returned 6 scores").all()
    assert wrong["challenger_score"].isna().all()
    assert (shadow.scored_rows, shadow.failed_rows) == (2, 6)


def test_sampling_shadow_scores_about_the_share(scorer_parts, synthetic_rows, feature_columns) -> None:
    plog, champion, challenger = scorer_parts["predlog"], scorer_parts["champion"], scorer_parts["challenger"]
    none = ShadowScorer(plog, lambda: challenger, 0.0, features=FEATURES)
    some = ShadowScorer(plog, lambda: challenger, 0.5, features=FEATURES, max_pending_requests=10_000)
    frame = synthetic_rows(1, seed=120)
    for i in range(400):
        _log(none, champion, frame, f"none-{i}", feature_columns)
        _log(some, champion, frame, f"some-{i}", feature_columns)
    assert none.pending_rows == 0
    # Binomial(400, 0.5): outside [140, 260] has a probability below 1e-9.
    assert 140 <= some.pending_rows <= 260
    sampled = some.pending_rows
    some.stop()
    assert some.scored_rows == sampled
    assert plog.buffered_rows == 800  # every request logged, shadow-scored or not
