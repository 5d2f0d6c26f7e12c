"""MLflow, probed as an attacker on the same machine would: nothing anonymous, the endpoint's account
read-only, no Host or Origin but the server's own, no database internals in any error body.

Against the real tracking server of ``tests/services.py``, started as the stack starts it.
"""

from __future__ import annotations

import httpx
import pytest

from continuous_training.config import load_policy
from continuous_training.credentials import MLFLOW_ENDPOINT, MLFLOW_PIPELINE, mlflow_credentials
from continuous_training.settings import load_settings

pytestmark = pytest.mark.integration

MODEL = load_policy().model.name

#: (method, path, JSON body or query) of REST, artifact and UI routes, reads and writes.
ROUTES = [
    ("GET", "/api/2.0/mlflow/experiments/search", {"max_results": 5}),
    ("GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": MODEL}),
    ("POST", "/api/2.0/mlflow/experiments/create", {"name": "intruder"}),
    ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": "1"}),
    ("GET", "/api/2.0/mlflow/registered-models/get", {"name": MODEL}),
    ("POST", "/api/2.0/mlflow/registered-models/create", {"name": "intruder"}),
    ("DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": MODEL}),
    ("POST", "/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion", "version": "1"}),
    ("GET", "/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion"}),
    ("POST", "/api/2.0/mlflow/model-versions/create", {"name": MODEL, "source": "/tmp/x"}),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts", {"path": "1"}),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/1/x/artifacts/model/MLmodel", None),
    ("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/x/artifacts/model/MLmodel", None),
    ("GET", "/", None),
    ("GET", "/ajax-api/2.0/mlflow/experiments/search", {"max_results": 5}),
    ("POST", "/api/2.0/mlflow/users/create", {"username": "intruder", "password": "x" * 16}),
]


def _send(http: httpx.Client, method: str, path: str, data: dict | None) -> httpx.Response:
    if method in ("GET", "DELETE") and data is not None and method == "GET":
        return http.request(method, path, params=data)
    if method == "PUT":
        return http.request(method, path, content=b"flavors: {}\n")
    return http.request(method, path, json=data)


def _client(mlflow_server: str, auth: tuple[str, str] | None = None) -> httpx.Client:
    return httpx.Client(base_url=mlflow_server, auth=auth, timeout=30)


@pytest.mark.parametrize(("method", "path", "data"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_anonymous_and_wrong_password_get_401(mlflow_server: str, method: str, path: str, data) -> None:
    wrong = (MLFLOW_PIPELINE, mlflow_credentials(load_settings())[MLFLOW_PIPELINE] + "x")
    for auth in (None, wrong, ("admin", "password1234"), ("nobody", "whatever-password")):
        with _client(mlflow_server, auth) as http:
            response = _send(http, method, path, data)
        assert response.status_code == 401, (auth and auth[0], response.status_code, response.text[:200])


def test_health_stays_open_for_probes(mlflow_server: str) -> None:
    assert httpx.get(f"{mlflow_server}/health", timeout=10).status_code == 200


def test_the_endpoint_account_reads_but_cannot_write(mlflow_server: str) -> None:
    settings = load_settings()
    secret = mlflow_credentials(settings)
    with _client(mlflow_server, (MLFLOW_PIPELINE, secret[MLFLOW_PIPELINE])) as pipeline:
        experiment = pipeline.get(
            "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": MODEL}
        )
        assert experiment.status_code == 200, experiment.text
        experiment_id = experiment.json()["experiment"]["experiment_id"]
        run = pipeline.post("/api/2.0/mlflow/runs/create", json={"experiment_id": experiment_id})
        assert run.status_code == 200, run.text  # the pipeline's account writes
        run_id = run.json()["run"]["info"]["run_id"]
    reader = _client(mlflow_server, (MLFLOW_ENDPOINT, secret[MLFLOW_ENDPOINT]))
    with reader:
        assert reader.get("/api/2.0/mlflow/registered-models/get", params={"name": MODEL}).status_code == 200
        assert (
            reader.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": experiment_id}).status_code
            == 200
        )
        writes = [
            ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment_id}),
            ("POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
            (
                "POST",
                "/api/2.0/mlflow/registered-models/alias",
                {"name": MODEL, "alias": "champion", "version": "1"},
            ),
            ("DELETE", "/api/2.0/mlflow/registered-models/alias", {"name": MODEL, "alias": "champion"}),
            (
                "POST",
                "/api/2.0/mlflow/model-versions/create",
                {"name": MODEL, "source": "/tmp/x", "run_id": run_id},
            ),
            ("PATCH", "/api/2.0/mlflow/registered-models/update", {"name": MODEL, "description": "x"}),
            ("DELETE", "/api/2.0/mlflow/registered-models/delete", {"name": MODEL}),
            ("POST", "/api/2.0/mlflow/users/create", {"username": "intruder", "password": "x" * 16}),
        ]
        for method, path, body in writes:
            response = reader.request(method, path, json=body)
            assert response.status_code == 403, (method, path, response.status_code, response.text[:200])
        put = reader.put(
            f"/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/{run_id}/artifacts/x.txt", content=b"x"
        )
        assert put.status_code == 403, put.text[:200]


def test_only_the_servers_own_host_and_origin_are_accepted(mlflow_server: str) -> None:
    secret = mlflow_credentials(load_settings())
    with _client(mlflow_server, (MLFLOW_PIPELINE, secret[MLFLOW_PIPELINE])) as http:
        path = "/api/2.0/mlflow/experiments/search"
        assert http.get(path, params={"max_results": 1}).status_code == 200
        rebinding = http.get(path, params={"max_results": 1}, headers={"Host": "evil.example"})
        assert rebinding.status_code == 403
        cross = http.post(
            "/api/2.0/mlflow/experiments/create",
            json={"name": "cors"},
            headers={"Origin": "http://evil.example"},
        )
        assert cross.status_code == 403
    # MLflow 3.17 exempts every localhost origin from its CORS check (security_utils.
    # should_block_cors_request), whatever --cors-allowed-origins says; such a request still needs
    # the credentials, so a page served from another local port cannot write anonymously.
    with _client(mlflow_server) as anonymous:
        local = anonymous.post(
            "/api/2.0/mlflow/experiments/create",
            json={"name": "cors"},
            headers={"Origin": "http://localhost:1"},
        )
    assert local.status_code == 401


@pytest.mark.parametrize(
    "body", [b'{"experiment_id": "1", "start_ti', b'{"experiment_id": "987654"}', b"\xff\xfe"]
)
def test_no_database_internals_in_error_bodies(mlflow_server: str, body: bytes) -> None:
    secret = mlflow_credentials(load_settings())
    headers = {"Content-Type": "application/json"}
    with _client(mlflow_server) as anonymous:
        assert anonymous.post("/api/2.0/mlflow/runs/create", content=body, headers=headers).status_code == 401
    with _client(mlflow_server, (MLFLOW_PIPELINE, secret[MLFLOW_PIPELINE])) as http:
        response = http.post("/api/2.0/mlflow/runs/create", content=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text[:300]
    for leak in ("[SQL:", "sqlite3", "INSERT INTO", "[parameters:", "Traceback"):
        assert leak not in response.text, response.text[:300]
