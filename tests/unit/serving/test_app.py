"""The prediction endpoint and the prediction log, against a real MLflow server and real models.

The session's ``mlflow server`` (``tests/services.py``: the stack's auth app and accounts) is used; tiny
scikit-learn pipelines are logged to it once and registered under a fresh model name per test, so each test
controls its own ``champion`` alias.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator
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
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline, make_pipeline

from continuous_training.config import load_contract
from continuous_training.credentials import endpoint_tokens
from continuous_training.lake import Lake
from continuous_training.model.registry import sign_version
from continuous_training.model.train import SKOPS_TRUSTED_TYPES, build_pipeline
from continuous_training.predlog import read_predictions
from continuous_training.serving.app import create_app
from continuous_training.serving.request import RequestError, frame_from_body
from continuous_training.settings import load_settings

CONTRACT = load_contract()
FEATURES = CONTRACT.feature_names
KEY = CONTRACT.key
LOOPBACK_CLIENT = ("127.0.0.1", 50000)


# ------------------------------------------------------------------------------------------ helpers


def fit_pipeline(synthetic_rows, seed: int, flip: bool = False) -> Pipeline:
    """A small model built like the real one; ``flip`` inverts the label so versions score differently."""
    frame = synthetic_rows(300, seed)
    label = (frame["credit_score"] < 575) | (frame["home_ownership"] == "RENT")
    label = (~label if flip else label).astype(int)
    pipeline = build_pipeline(CONTRACT, {"max_iter": 15, "random_state": 0})
    return pipeline.fit(frame[FEATURES], label)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dict(orient="records")


def expected_scores(pipeline: Pipeline, frame: pd.DataFrame) -> np.ndarray:
    return pipeline.predict_proba(frame[FEATURES])[:, 1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models(mlflow_server: str, synthetic_rows) -> dict[str, Any]:
    """Three logged models: v1 and v2 (different scores) and one that cannot score contract rows."""
    mlflow.set_tracking_uri(mlflow_server)
    first, second = fit_pipeline(synthetic_rows, 1), fit_pipeline(synthetic_rows, 2, flip=True)
    wrong = make_pipeline(HistGradientBoostingClassifier(max_iter=3)).fit(np.eye(4), [0, 1, 0, 1])
    uris = {}
    # An experiment of the tests' own: ct-pipeline (this process) owns what it creates, not Default's.
    experiment = MlflowClient(mlflow_server).create_experiment(f"serving_models_{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(experiment_id=experiment):
        for label, model in (("first", first), ("second", second), ("wrong", wrong)):
            info = mlflow.sklearn.log_model(
                model, name=label, skops_trusted_types=SKOPS_TRUSTED_TYPES, pip_requirements=["scikit-learn"]
            )
            uris[label] = info.model_uri
    return {"first": first, "second": second, "uris": uris, "client": MlflowClient(mlflow_server)}


#: The gate verdict the tests' versions are signed with (the endpoint serves only signed versions).
PASSED_GATE = {"passed": True, "metric": "roc_auc", "challenger_value": 0.9, "forced": False}


def register(models: dict[str, Any], name: str, label: str) -> str:
    """Register a logged model and sign it with the key of the current CT_HOME, as the train DAG would."""
    version = str(mlflow.register_model(models["uris"][label], name).version)
    sign_version(name, version, verdict=PASSED_GATE)
    return version


def set_champion(models: dict[str, Any], name: str, version: str) -> None:
    models["client"].set_registered_model_alias(name, "champion", version)


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mlflow_server: str) -> dict[str, Any]:
    """Settings for an endpoint serving a fresh model name, polling fast, with its own lake."""
    name = f"serving_test_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CT_LAKE", str(tmp_path / "lake"))
    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("CT_MODEL_NAME", name)
    monkeypatch.setenv("CT_ENDPOINT_POLL_SECONDS", "0.2")
    monkeypatch.setenv("CT_ENDPOINT_FLUSH_SECONDS", "0.2")
    return {"name": name, "lake": Lake(tmp_path / "lake"), "settings": load_settings()}


@pytest.fixture(scope="module")
def served(
    mlflow_server: str, models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """One running endpoint whose champion is the ``first`` model, shared by the read-only tests."""
    name = f"serving_shared_{uuid.uuid4().hex[:8]}"
    lake = tmp_path_factory.mktemp("shared_lake")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CT_HOME", str(lake.parent / "home"))
        mp.setenv("CT_LAKE", str(lake))
        mp.setenv("CT_MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("CT_MODEL_NAME", name)
        # Signed with this CT_HOME's key, the one the endpoint verifies with.
        set_champion(models, name, register(models, name, "first"))
        app = create_app(load_settings())
        with TestClient(app, client=LOOPBACK_CLIENT) as client:
            yield client


# ---------------------------------------------------------------------------------- the endpoint


@pytest.mark.parametrize("registered", [False, True], ids=["unknown-model", "registered-no-alias"])
def test_no_champion_serves_503_until_the_alias_is_set(
    app_env: dict[str, Any], models: dict[str, Any], registered: bool, synthetic_rows
) -> None:
    name = app_env["name"]
    if registered:
        register(models, name, "first")
    rows = synthetic_rows(3, seed=7)
    with TestClient(create_app(app_env["settings"]), client=LOOPBACK_CLIENT) as client:
        health = client.get("/health").json()
        assert health["status"] == "no_model"
        assert health["model_name"] == name
        assert health["model_version"] is None
        assert health["pid"] == os.getpid()
        response = client.post("/predict", json={"rows": records(rows)}, headers={"X-Request-ID": "early-1"})
        assert response.status_code == 503
        assert response.json()["request_id"] == "early-1"
        assert response.headers["X-Request-ID"] == "early-1"

        version = "1" if registered else register(models, name, "first")
        set_champion(models, name, version)
        admin = {"Authorization": f"Bearer {endpoint_tokens(app_env['settings'])['admin_token']}"}
        reloaded = client.post("/reload", headers=admin).json()
        assert reloaded["status"] == "ok"
        assert reloaded["model_version"] == version
        assert reloaded["last_error"] is None
        response = client.post("/predict", json={"rows": records(rows)})
        assert response.status_code == 200
        assert response.json()["model_version"] == version


@pytest.mark.parametrize("fmt", ["rows", "dataframe_records", "dataframe_split"])
def test_predict_scores_match_the_pipeline_in_every_body_format(
    served: TestClient, models: dict[str, Any], fmt: str, synthetic_rows
) -> None:
    rows = synthetic_rows(25, seed=11)
    if fmt == "dataframe_split":
        # Columns in another order than the contract's, plus an ignored timestamp column.
        shuffled = rows[[KEY, *reversed(FEATURES)]].assign(applied_at="2026-01-01T00:00:00Z")
        body = {"dataframe_split": {"columns": list(shuffled.columns), "data": shuffled.values.tolist()}}
    else:
        body = {fmt: records(rows)}
    response = served.post("/predict", json=body, headers={"X-Request-ID": f"fmt-{fmt}"})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["request_id"] == f"fmt-{fmt}"
    assert response.headers["X-Request-ID"] == f"fmt-{fmt}"
    assert payload["model_version"] == "1"
    scores = np.array(payload["predictions"])
    assert scores.shape == (25,)
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(scores, expected_scores(models["first"], rows), rtol=1e-12, atol=0)


def test_the_project_model_is_served_by_the_compiled_scorer(served: TestClient) -> None:
    # build_pipeline's model qualifies for the compiled scorer; the scores test above checks them.
    assert served.get("/health").json()["scorer"] == "compiled"


def test_request_id_is_generated_when_absent(served: TestClient, synthetic_rows) -> None:
    response = served.post("/predict", json={"rows": records(synthetic_rows(1, seed=3))})
    assert response.status_code == 200
    request_id = response.json()["request_id"]
    assert uuid.UUID(request_id).version == 4
    assert response.headers["X-Request-ID"] == request_id


def test_unknown_category_is_scored(served: TestClient, models: dict[str, Any], synthetic_rows) -> None:
    rows = synthetic_rows(2, seed=5)
    rows.loc[1, "loan_purpose"] = "space_tourism"
    response = served.post("/predict", json={"rows": records(rows)})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        response.json()["predictions"], expected_scores(models["first"], rows), rtol=1e-12
    )


def test_missing_column_is_422_naming_it(served: TestClient, synthetic_rows) -> None:
    rows = records(synthetic_rows(3, seed=2))
    del rows[2]["credit_score"]
    response = served.post("/predict", json={"rows": rows}, headers={"X-Request-ID": "bad-1"})
    assert response.status_code == 422
    error = response.json()
    assert (error["row"], error["column"], error["request_id"]) == (2, "credit_score", "bad-1")
    assert "credit_score" in error["error"]


def test_wrong_type_is_422_naming_row_and_column(served: TestClient, synthetic_rows) -> None:
    rows = records(synthetic_rows(4, seed=2))
    rows[1]["annual_income"] = "lots"
    response = served.post("/predict", json={"dataframe_records": rows})
    assert response.status_code == 422
    error = response.json()
    assert (error["row"], error["column"], error["expected"]) == (1, "annual_income", "a number")
    assert "row 1" in error["error"]
    assert "got a string" in error["error"]
    assert "lots" not in response.text  # the client's value is never echoed


def test_empty_rows_are_422(served: TestClient) -> None:
    response = served.post("/predict", json={"rows": []})
    assert response.status_code == 422
    assert "no rows" in response.json()["error"]


def test_reload_needs_the_admin_token(served: TestClient) -> None:
    # From any address: the token is the authentication (the served fixture's CT_HOME holds it).
    token = endpoint_tokens(load_settings())["admin_token"]
    remote = TestClient(served.app, client=("192.0.2.7", 1234))
    assert remote.post("/reload").status_code == 401
    assert served.post("/reload", headers={"Authorization": "Bearer wrong-token-0123"}).status_code == 401
    assert remote.post("/reload", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.filterwarnings("ignore:X has feature names:UserWarning")  # the deliberately broken model
def test_alias_move_is_served_without_failed_requests_and_logged(
    app_env: dict[str, Any], models: dict[str, Any], synthetic_rows, wait_for
) -> None:
    name, lake = app_env["name"], app_env["lake"]
    first, second = register(models, name, "first"), register(models, name, "second")
    broken = register(models, name, "wrong")
    set_champion(models, name, first)
    rows = synthetic_rows(5, seed=21)
    body = {"rows": records(rows)}
    want = {first: expected_scores(models["first"], rows), second: expected_scores(models["second"], rows)}
    assert not np.allclose(want[first], want[second])
    started = datetime.now(UTC)
    seen: list[tuple[int, str, str, list[float]]] = []
    stop = threading.Event()

    with TestClient(create_app(app_env["settings"]), client=LOOPBACK_CLIENT) as client:

        def keep_sending() -> None:
            i = 0
            while not stop.is_set():
                request_id = f"load-{i}"
                response = client.post("/predict", json=body, headers={"X-Request-ID": request_id})
                payload = response.json()
                seen.append(
                    (
                        response.status_code,
                        request_id,
                        payload.get("model_version"),
                        payload.get("predictions"),
                    )
                )
                i += 1

        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        try:
            wait_for(lambda: len(seen) >= 5, 20, "requests on the first version")
            set_champion(models, name, second)
            # Poll period + download + hash check + skops load + scorer check, while this thread keeps
            # the GIL busy: seconds on a quiet machine, much more on a loaded CI one.
            wait_for(lambda: seen[-1][2] == second, 60, "the endpoint to serve the second version")
            wait_for(
                lambda: sum(v == second for _, _, v, _ in seen) >= 5, 20, "requests on the second version"
            )

            # A version that cannot score contract rows is refused; the second keeps serving.
            set_champion(models, name, broken)
            wait_for(lambda: client.get("/health").json()["last_error"] is not None, 10, "the load failure")
            count = len(seen)
            wait_for(lambda: len(seen) >= count + 5, 20, "requests after the failed load")
        finally:
            stop.set()
            sender.join(30)
        health = client.get("/health").json()

    assert health["status"] == "ok"
    assert health["model_version"] == second
    assert f"version {broken}" in health["last_error"]
    assert all(status == 200 for status, _, _, _ in seen), {s for s, _, _, _ in seen}
    versions = [v for _, _, v, _ in seen]
    assert set(versions) == {first, second}
    # Once the second version answered, the first never did again.
    assert first not in versions[versions.index(second) :]
    for _, _, version, scores in seen:
        np.testing.assert_allclose(scores, want[version], rtol=1e-12)

    # Every served row was logged (the app flushed at shutdown), under the version that scored it.
    logged = read_predictions(lake, started - timedelta(seconds=1), datetime.now(UTC) + timedelta(seconds=1))
    assert len(logged) == 5 * len(seen)
    by_request = {request_id: version for _, request_id, version, _ in seen}
    assert set(logged["request_id"]) == set(by_request)
    assert (logged["model_version"] == logged["request_id"].map(by_request)).all()
    assert set(logged["row_id"]) == set(rows[KEY])
    assert (logged["model_name"] == name).all()
    only_second = read_predictions(
        lake, started - timedelta(seconds=1), datetime.now(UTC), model_version=second
    )
    assert len(only_second) == 5 * versions.count(second)
    one_request = only_second[only_second["request_id"] == only_second["request_id"].iloc[0]]
    np.testing.assert_allclose(one_request["score"], want[second], rtol=1e-12)


# ---------------------------------------------------------------------------- parsing, no server


def _body(**payload: Any) -> bytes:
    import orjson

    return orjson.dumps(payload)


def _valid_records(synthetic_rows, n: int = 3) -> list[dict[str, Any]]:
    return records(synthetic_rows(n, seed=9))


def _with(rows: list[dict[str, Any]], i: int, column: str, value: Any) -> list[dict[str, Any]]:
    rows[i][column] = value
    return rows


@pytest.mark.parametrize(
    ("body", "row", "column", "message"),
    [
        (b"{not json", None, None, "not valid JSON"),
        (_body(instances=[]), None, None, "exactly one of"),
        (_body(rows=[], dataframe_records=[]), None, None, "exactly one of"),
        (_body(rows={"a": 1}), None, None, "list of row objects"),
        (_body(rows=[1]), 0, None, "expected an object"),
        ((2, "age", None), 2, "age", "expected a number, got null"),
        ((1, "age", True), 1, "age", "got a boolean"),
        ((0, "age", 30.5), 0, "age", "expected an integer"),
        ((2, "region", 3), 2, "region", "expected a string"),
        (_body(dataframe_split={"columns": ["age"], "data": [[30]]}), 0, "annual_income", "missing feature"),
        (_body(dataframe_split={"columns": FEATURES, "data": [[1, 2]]}), 0, None, "list of 20 values"),
        (_body(dataframe_split=[1, 2]), None, None, "'columns' and 'data'"),
    ],
    ids=[
        "bad-json",
        "unknown-format",
        "two-formats",
        "rows-not-list",
        "row-not-object",
        "null-number",
        "bool-number",
        "fractional-integer",
        "number-category",
        "split-missing-column",
        "split-short-row",
        "split-not-object",
    ],
)
def test_frame_from_body_refuses_bad_bodies(
    body: bytes | tuple[int, str, Any], row: int | None, column: str | None, message: str, synthetic_rows
) -> None:
    if isinstance(body, tuple):
        # (row, column, value): valid records with one value replaced.
        body = _body(rows=_with(_valid_records(synthetic_rows), *body))
    with pytest.raises(RequestError, match=re.escape(message)) as caught:
        frame_from_body(body, CONTRACT)
    assert (caught.value.row, caught.value.column) == (row, column)


def test_frame_from_body_types_columns_and_keeps_the_key(synthetic_rows) -> None:
    rows = _valid_records(synthetic_rows, 2)
    rows[0]["age"] = 41  # an int where the generator gave a float
    rows[1].pop(KEY)
    rows[1]["extra"] = "ignored"
    frame = frame_from_body(_body(rows=rows), CONTRACT)
    assert list(frame.columns) == [*FEATURES, KEY]
    assert all(frame[c].dtype == np.float64 for c in CONTRACT.numeric_features)
    assert all(frame[c].map(type).eq(str).all() for c in CONTRACT.categorical_features)
    assert frame[KEY].tolist() == [rows[0][KEY], None]
    assert frame.loc[0, "age"] == 41.0


# ------------------------------------------------------------------------- the prediction log
