"""The prediction endpoint under hostile requests: the real uvicorn endpoint (two workers) serving a real,
signed champion, fuzzed as an attacker on the same machine would.

Every hostile request is answered with the right 4xx within :data:`BOUND_S` seconds, never with a trace
or anything the client sent (each holds :data:`CANARY`); afterwards the same worker processes serve, their
memory (VmRSS) has not grown by more than 10 %, and ``/health`` and a valid request are fine. The 100 MB
bodies (declared, and chunked from a generator) are refused before they are read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import mlflow
import mlflow.sklearn
import numpy as np
import orjson
import pytest
from mlflow import MlflowClient

from continuous_training.config import load_contract, load_policy
from continuous_training.credentials import endpoint_tokens
from continuous_training.lineage import CHAMPION
from continuous_training.model.registry import sign_version
from continuous_training.model.train import SKOPS_TRUSTED_TYPES, build_pipeline
from continuous_training.ops.simulate import SimulatorConfig, generate_day, to_json_rows
from continuous_training.settings import load_settings

pytestmark = pytest.mark.integration

CONTRACT = load_contract()
FEATURES = CONTRACT.feature_names
MODEL = load_policy().model.name
CANARY = "ZQX-canary-4417"
#: The longest any refusal may take.
BOUND_S = 10.0
#: Largest growth of a worker's resident memory over the whole fuzz.
RSS_GROWTH = 0.10
MB = 1024 * 1024
JSON = {"Content-Type": "application/json"}
PASSED_GATE = {"passed": True, "metric": "roc_auc", "challenger_value": 0.9, "forced": False}


# ----------------------------------------------------------------------------------------- helpers


def _rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _worker_pids(url: str, version: str | None = None, timeout: float = 120) -> set[int]:
    """The endpoint's worker pids, from /health on new connections, once every worker answers
    (serving ``version`` if given)."""
    workers = load_settings().endpoint_workers
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", timeout=5).json()
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if version is None or (health["status"] == "ok" and health["model_version"] == version):
            seen.add(health["pid"])
            if len(seen) >= workers:
                return seen
        time.sleep(0.05)
    raise AssertionError(f"only workers {sorted(seen)} answered (serving {version}) within {timeout} s")


def _valid_rows(n: int, seed: int = 5) -> list[dict[str, Any]]:
    day = generate_day("2026-05-01", SimulatorConfig(seed=seed, rows_per_day=max(n, 10)), CONTRACT)
    return to_json_rows(day.drop(columns=[CONTRACT.target]).head(n))


def _chunks(total: int, size: int = MB) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


@pytest.fixture(scope="module")
def champion(mlflow_server: str, endpoint: str) -> dict[str, Any]:
    """A small signed model version, the ``champion`` of the policy's model; served by every worker."""
    frame = generate_day("2026-04-01", SimulatorConfig(seed=3, rows_per_day=600), CONTRACT)
    pipeline = build_pipeline(CONTRACT, {"max_iter": 20, "random_state": 0})
    pipeline.fit(frame[FEATURES], frame[CONTRACT.target])
    client = MlflowClient(mlflow_server)
    # ct-pipeline (this process) may write to the policy model's experiment and registered model.
    experiment = client.get_experiment_by_name(MODEL) or client.get_experiment(
        client.create_experiment(MODEL)
    )
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            pip_requirements=["scikit-learn"],
        )
    version = str(mlflow.register_model(info.model_uri, MODEL).version)
    sign_version(MODEL, version, verdict=PASSED_GATE)
    client.set_registered_model_alias(MODEL, CHAMPION, version)
    pids = _worker_pids(endpoint, version)
    return {"version": version, "pids": pids, "url": endpoint}


def _post(
    url: str, content: Any, headers: dict[str, str] | None = None, path: str = "/predict"
) -> httpx.Response:
    started = time.monotonic()
    # A new connection per request: refusals may close theirs, and the kernel spreads connections
    # over the workers.
    with httpx.Client(timeout=BOUND_S + 5) as http:
        response = http.post(f"{url}{path}", content=content, headers=headers or {})
    elapsed = time.monotonic() - started
    assert elapsed < BOUND_S, f"answered after {elapsed:.1f} s"
    return response


def _clean(response: httpx.Response) -> dict[str, Any]:
    """The JSON refusal, checked: no trace, nothing of the request, a request id, what was expected."""
    text = response.text
    assert CANARY not in text, text[:500]
    assert "Traceback" not in text, text[:500]
    assert 'File "' not in text, text[:500]
    payload = response.json()
    assert payload["request_id"]
    assert response.headers["x-request-id"] == payload["request_id"]
    assert payload.get("expected"), payload
    return payload


# ------------------------------------------------------------------------------------- fuzz cases


def _rows_with(column: str, value: Any) -> bytes:
    rows = _valid_rows(2)
    rows[1][column] = value
    return orjson.dumps({"rows": rows})


C = CANARY.encode()
#: id -> (body or a callable giving one, headers, expected status). Bodies are built lazily.
FUZZ: dict[str, tuple[Any, dict[str, str], int]] = {
    "malformed-json": (b'{"rows": [{"age": ' + C + b", }", JSON, 400),
    "truncated-json": (b'{"rows": [{"age": 3', JSON, 400),
    "empty-body": (b"", JSON, 400),
    "text-plain": (lambda: orjson.dumps({"rows": _valid_rows(1)}), {"Content-Type": "text/plain"}, 415),
    "content-type-canary": (
        lambda: orjson.dumps({"rows": _valid_rows(1)}),
        {"Content-Type": f"text/{CANARY}"},
        415,
    ),
    "no-content-type": (lambda: orjson.dumps({"rows": _valid_rows(1)}), {}, 415),
    "other-charset": (
        lambda: orjson.dumps({"rows": _valid_rows(1)}),
        {"Content-Type": "application/json; charset=latin-1"},
        415,
    ),
    "form": (b"rows=" + C, {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    "non-utf8": (b'{"rows": [{"region": "' + C + b'\xff\xfe\xfa"}]}', JSON, 400),
    "utf16": ('{"rows": []}'.encode("utf-16"), JSON, 400),
    "missing-column": (
        lambda: orjson.dumps({"rows": [{k: v for k, v in r.items() if k != "age"} for r in _valid_rows(2)]}),
        JSON,
        422,
    ),
    "only-unknown-columns": (orjson.dumps({"rows": [{CANARY: 1, f"{CANARY}-2": CANARY}]}), JSON, 422),
    "unknown-format": (orjson.dumps({CANARY: [], "instances": [CANARY]}), JSON, 422),
    "string-for-number": (lambda: _rows_with("annual_income", CANARY), JSON, 422),
    "object-for-category": (lambda: _rows_with("region", {CANARY: CANARY}), JSON, 422),
    "bool-for-integer": (lambda: _rows_with("age", True), JSON, 422),
    "fractional-integer": (lambda: _rows_with("credit_score", 700.5), JSON, 422),
    "nan-literal": (lambda: _rows_with("age", 30).replace(b'"age":30', b'"age":NaN'), JSON, 400),
    "infinity-literal": (lambda: _rows_with("age", 30).replace(b'"age":30', b'"age":Infinity'), JSON, 400),
    "huge-number": (lambda: _rows_with("age", 30).replace(b'"age":30', b'"age":1e999'), JSON, 400),
    "ten-thousand-columns": (orjson.dumps({"rows": [{f"{CANARY}{i}": i for i in range(10_000)}]}), JSON, 422),
    "ten-thousand-split-columns": (
        orjson.dumps(
            {"dataframe_split": {"columns": [f"{CANARY}{i}" for i in range(10_000)], "data": [[0] * 10_000]}}
        ),
        JSON,
        422,
    ),
    "nested-100000-deep": (b'{"rows": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, 400),
    "nested-objects-deep": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, JSON, 400),
    "hundred-thousand-rows": (b'{"rows": [' + b",".join([b"{}"] * 100_000) + b"]}", JSON, 413),
    "hundred-thousand-split-rows": (
        orjson.dumps({"dataframe_split": {"columns": FEATURES, "data": [[]] * 100_000}}),
        JSON,
        413,
    ),
    "100mb-declared": (lambda: b"[" + b" " * (100 * MB) + b"]", JSON, 413),
    "100mb-chunked": (lambda: _chunks(100 * MB), JSON, 413),
    "5mb-chunked": (lambda: _chunks(5 * MB, 64 * 1024), JSON, 413),
    "request-id-canary": (
        lambda: orjson.dumps({"rows": _valid_rows(1)}),
        {**JSON, "X-Request-ID": CANARY * 10},
        422,
    ),
    "request-id-control-chars": (
        lambda: orjson.dumps({"rows": _valid_rows(1)}),
        {**JSON, "X-Request-ID": f"{CANARY}\t{CANARY}"},
        422,
    ),
}


@pytest.fixture(scope="module")
def baseline(champion: dict[str, Any]) -> dict[int, int]:
    """Each worker's VmRSS (kB) after a warm-up of valid requests, before any hostile one."""
    url = champion["url"]
    for n in (1, 100, 1000, 1, 100):
        for _ in range(4):
            response = _post(url, orjson.dumps({"rows": _valid_rows(n)}), JSON)
            assert response.status_code == 200, response.text
    time.sleep(1.5)  # the prediction log flushes
    return {pid: _rss_kb(pid) for pid in champion["pids"]}


@pytest.mark.parametrize("case", list(FUZZ))
def test_hostile_requests_get_the_right_4xx_quickly_and_echo_nothing(
    champion: dict[str, Any], baseline: dict[int, int], case: str
) -> None:
    content, headers, status = FUZZ[case]
    # Twice, on new connections: most likely both workers see it.
    for _ in range(2):
        body = content() if callable(content) else content
        response = _post(champion["url"], body, headers)
        assert response.status_code == status, (case, response.status_code, response.text[:300])
        _clean(response)


def test_the_limits_answer_before_the_body_is_read(champion: dict[str, Any]) -> None:
    for content in (b" " * (100 * MB), _chunks(100 * MB)):
        response = _post(champion["url"], content, JSON)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"  # the rest is not read either
        assert (
            _clean(response)["expected"] == f"a body of at most {load_policy().serving.max_body_bytes} bytes"
        )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", f"/{CANARY}", 404),
        ("POST", f"/predict/{CANARY}", 404),
        ("GET", "/predict", 405),
        ("DELETE", "/health", 405),
    ],
)
def test_routing_errors_echo_nothing(champion: dict[str, Any], method: str, path: str, status: int) -> None:
    response = httpx.request(method, f"{champion['url']}{path}?{CANARY}=1", timeout=BOUND_S)
    assert response.status_code == status
    _clean(response)


def test_out_of_range_values_are_scored_and_flagged_without_values(champion: dict[str, Any]) -> None:
    rows = _valid_rows(3)
    rows[1]["age"] = 150
    rows[2]["region"] = CANARY
    response = _post(champion["url"], orjson.dumps({"rows": rows}), JSON)
    assert response.status_code == 200, response.text
    assert CANARY not in response.text
    payload = response.json()
    assert len(payload["predictions"]) == 3
    assert payload["flagged"] == [{"row": 1, "columns": ["age"]}, {"row": 2, "columns": ["region"]}]


def test_reload_needs_the_admin_token(champion: dict[str, Any]) -> None:
    url = champion["url"]
    missing = _post(url, b"", path="/reload")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    _clean(missing)
    wrong = _post(url, b"", {"Authorization": f"Bearer {CANARY}"}, path="/reload")
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    _clean(wrong)
    token = endpoint_tokens(load_settings())["admin_token"]
    ok = _post(url, b"", {"Authorization": f"Bearer {token}"}, path="/reload")
    assert ok.status_code == 200, ok.text
    assert ok.json()["model_version"] == champion["version"]
    assert token not in ok.text


def test_the_workers_survive_the_fuzz_unchanged(champion: dict[str, Any], baseline: dict[int, int]) -> None:
    # Runs after the fuzz (file order); on its own it checks that the warm-up left the workers intact.
    url = champion["url"]
    assert _worker_pids(url, timeout=30) == champion["pids"], "a worker was replaced"
    for pid, before in baseline.items():
        after = _rss_kb(pid)
        assert after <= before * (1 + RSS_GROWTH), f"worker {pid}: VmRSS {before} kB -> {after} kB"
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["status"] == "ok"
    rows = _valid_rows(5)
    response = _post(url, orjson.dumps({"rows": rows}), JSON)
    assert response.status_code == 200, response.text
    scores = np.array(response.json()["predictions"])
    assert scores.shape == (5,)
    assert ((scores >= 0) & (scores <= 1)).all()
