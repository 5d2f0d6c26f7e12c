"""A model's life against a real MLflow server: train, retrain (reused), evaluate, register, deploy, roll back.

The tests run in file order and share one lake, one registered model and the runs they create: each
step starts from what the previous one left, as the train DAG does. They use their own lake and model
name, so they do not meet the DAG tests of the same session.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import mlflow
import pandas as pd
import pytest

from continuous_training import modelstore
from continuous_training.config import ModelPolicy, load_contract, load_policy
from continuous_training.lake import (
    DATA_FILE,
    MANIFEST_FILE,
    Lake,
    write_json_atomic,
    write_parquet_bytes_stable,
)
from continuous_training.lineage import EVALUATION_REPORT_ARTIFACT, REFERENCE_ARTIFACT
from continuous_training.model import registry
from continuous_training.model.deploy import (
    _POLL_S,
    STABLE_S,
    DeployError,
    DeployRolledBack,
    promote_champion,
    smoke_test,
)
from continuous_training.model.evaluate import evaluate_challenger, gate_verdict
from continuous_training.model.train import train_challenger
from continuous_training.model.training_set import build_training_set, select_training_days
from continuous_training.ops.simulate import SimulatorConfig, generate_day

pytestmark = pytest.mark.integration

MODEL = "lifecycle_test"
DAYS = [(date(2026, 4, 1) + timedelta(days=i)).isoformat() for i in range(6)]
LINEAGE_A = {"dag_id": "train", "dag_run_id": "manual__2026-04-07T00:00:00+00:00", "git_commit": "abc1234"}
LINEAGE_B = {"dag_id": "train", "dag_run_id": "manual__2026-04-08T00:00:00+00:00", "git_commit": "abc1234"}


def dead_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def world(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Six validated partitions of simulated applications, the policy with this module's model name."""
    contract = load_contract()
    lake = Lake(tmp_path_factory.mktemp("lifecycle") / "lake")
    for day in DAYS:
        df = generate_day(day, SimulatorConfig(seed=11, rows_per_day=500), contract)
        sha = write_parquet_bytes_stable(df, lake.validated(day) / DATA_FILE)
        write_json_atomic(lake.validated(day) / MANIFEST_FILE, {"day": day, "rows": len(df), "sha256": sha})
    base = load_policy()
    policy = dataclasses.replace(
        base,
        model=ModelPolicy(name=MODEL, params={**base.model.params, "max_iter": 60}),
        training=dataclasses.replace(base.training, reference_sample_rows=1000),
    )
    training_set = build_training_set(lake, select_training_days(lake, 28))
    return {
        "contract": contract,
        "lake": lake,
        "policy": policy,
        "training_set": training_set,
        "client": mlflow.MlflowClient(mlflow_server),
        "state": {},
    }


def train(world: dict[str, Any], lineage: dict[str, str]) -> dict[str, Any]:
    return train_challenger(
        world["training_set"],
        reason="manual",
        lineage=lineage,
        contract=world["contract"],
        policy=world["policy"],
        lake=world["lake"],
    )


def evaluate(world: dict[str, Any], run_id: str) -> dict[str, Any]:
    return evaluate_challenger(run_id, contract=world["contract"], policy=world["policy"], lake=world["lake"])


def test_train_logs_a_complete_run(world):
    result = train(world, LINEAGE_A)
    world["state"]["a"] = result
    client, ts = world["client"], world["training_set"]
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(result["experiment_id"]).name == MODEL
    tags = run.data.tags
    assert tags["ct.training_set_sha256"] == ts["sha256"]
    assert tags["ct.dag_run_id"] == LINEAGE_A["dag_run_id"]
    assert tags["ct.git_commit"] == "abc1234"
    assert tags["ct.reason"] == "manual"
    assert tags["ct.holdout_days"] == ",".join(DAYS[-2:]) == ",".join(result["holdout_days"])
    assert int(run.data.params["train_rows"]) == result["train_rows"] > 0
    assert result["train_rows"] + result["holdout_rows"] == ts["rows"]
    assert 0.5 < result["metrics"]["train_roc_auc"] <= 1.0

    inputs = {(i.dataset.name, i.tags[0].value) for i in run.inputs.dataset_inputs}
    assert inputs == {("training", "training"), ("holdout", "holdout")}
    sources = {json.loads(i.dataset.source)["uri"] for i in run.inputs.dataset_inputs}
    assert sources == {f"file://{ts['path']}"}

    model = mlflow.sklearn.load_model(result["model_uri"])
    sample = generate_day(DAYS[-1], SimulatorConfig(seed=11, rows_per_day=500)).head(5)
    scores = model.predict_proba(sample[world["contract"].feature_names])[:, 1]
    assert ((scores >= 0) & (scores <= 1)).all()

    reference = mlflow.artifacts.download_artifacts(
        run_id=result["run_id"], artifact_path=REFERENCE_ARTIFACT, tracking_uri=client.tracking_uri
    )
    frame = pd.read_parquet(reference)
    assert list(frame.columns) == [*world["contract"].feature_names, "defaulted"]
    assert len(frame) == min(1000, result["train_rows"])


def test_training_again_in_the_same_dag_run_reuses_the_run(world):
    first = world["state"]["a"]
    again = train(world, LINEAGE_A)
    assert again["run_id"] == first["run_id"]
    assert again["reused"] is True
    assert again["metrics"] == pytest.approx(first["metrics"])
    runs = world["client"].search_runs([first["experiment_id"]])
    assert [r.info.run_id for r in runs] == [first["run_id"]]


def test_a_killed_attempt_is_marked_failed_not_reused(world):
    client, sha = world["client"], world["training_set"]["sha256"]
    exp_id = world["state"]["a"]["experiment_id"]
    stale = client.create_run(
        exp_id, tags={"ct.dag_run_id": LINEAGE_B["dag_run_id"], "ct.training_set_sha256": sha}
    )  # left RUNNING, as a SIGKILLed task leaves it
    result = train(world, LINEAGE_B)
    world["state"]["b"] = result
    assert result["run_id"] != stale.info.run_id
    assert result["reused"] is False
    assert client.get_run(stale.info.run_id).info.status == "FAILED"
    assert client.get_run(result["run_id"]).info.status == "FINISHED"


def test_evaluate_without_champion(world):
    run_id = world["state"]["a"]["run_id"]
    evaluation = evaluate(world, run_id)
    assert evaluation["champion"] is None
    assert evaluation["champion_version"] is None
    assert evaluation["champion_error"] is None
    assert evaluation["holdout_days"] == DAYS[-2:]
    assert set(evaluation["challenger"]) == {"roc_auc", "average_precision", "log_loss", "brier"}
    assert evaluation["challenger"]["roc_auc"] > 0.7  # the simulator's signal is learnable
    world["state"]["eval_a"] = evaluation

    again = evaluate(world, run_id)
    assert again["challenger"] == evaluation["challenger"]
    client = world["client"]
    history = client.get_metric_history(run_id, "holdout_roc_auc")
    assert [h.value for h in history] == [evaluation["challenger"]["roc_auc"]]  # not logged twice
    assert client.get_run(run_id).data.metrics.get("champion_holdout_roc_auc") is None
    assert evaluation["report_artifact_uri"].endswith(EVALUATION_REPORT_ARTIFACT)
    page = mlflow.artifacts.load_text(evaluation["report_artifact_uri"])
    assert "no champion yet" in page
    assert page.count("<polyline") == 1


def test_register_twice_gives_one_version(world):
    run_id = world["state"]["a"]["run_id"]
    verdict = gate_verdict(world["state"]["eval_a"]["challenger"], None, world["policy"].gate)
    assert verdict["passed"], verdict["reasons"]
    first = registry.register_challenger(run_id, verdict=verdict, lineage=LINEAGE_A, name=MODEL)
    second = registry.register_challenger(run_id, verdict=verdict, lineage=LINEAGE_A, name=MODEL)
    assert first["created"] is True
    assert second["created"] is False
    assert first["version"] == second["version"] == "1"
    client = world["client"]
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
    mv = client.get_model_version(MODEL, "1")
    assert mv.run_id == run_id
    assert mv.status == "READY"
    assert mv.tags["ct.training_set_sha256"] == world["training_set"]["sha256"]
    assert mv.tags["ct.dag_run_id"] == LINEAGE_A["dag_run_id"]
    assert mv.tags["ct.git_commit"] == "abc1234"
    assert json.loads(mv.tags["ct.gate_verdict"])["passed"] is True
    assert float(mv.tags["ct.gate_metric_value"]) == pytest.approx(verdict["challenger_value"])
    assert client.get_registered_model(MODEL).aliases == {"challenger": "1"}
    assert registry.get_champion(MODEL) is None


def test_version_loads_and_passes_the_smoke_test(world):
    reference = modelstore.load_reference_sample(MODEL, 1)
    assert len(reference) == min(1000, world["state"]["a"]["train_rows"])
    result = smoke_test(MODEL, 1, reference.head(100))
    assert result["rows"] == 100
    assert 0 < result["mean_score"] < 1
    with pytest.raises(DeployError, match="predict_proba failed.*credit_score"):
        smoke_test(MODEL, 1, reference.drop(columns=["credit_score"]).head(10))
    with pytest.raises(DeployError, match="no rows"):
        smoke_test(MODEL, 1, reference.head(0))


def test_first_promotion_to_a_dead_endpoint_removes_the_alias(world):
    url = dead_url()
    with pytest.raises(
        DeployRolledBack, match=rf"{MODEL} v1 not served by {url} after 2s; champion alias removed"
    ):
        promote_champion(MODEL, 1, endpoint_url=url, timeout_s=2)
    assert "champion" not in world["client"].get_registered_model(MODEL).aliases
    assert registry.get_champion(MODEL) is None


def test_evaluate_against_the_champion_on_the_same_holdout(world):
    client = world["client"]
    # v1 as champion, as a deploy that the endpoint confirmed would leave it.
    client.set_registered_model_alias(MODEL, "champion", "1")
    champion = registry.get_champion(MODEL)
    assert champion["version"] == "1"
    assert champion["run_id"] == world["state"]["a"]["run_id"]
    assert champion["days"] == DAYS
    assert champion["newest_day"] == DAYS[-1]
    assert champion["training_set_sha256"] == world["training_set"]["sha256"]

    run_b = world["state"]["b"]["run_id"]
    evaluation = evaluate(world, run_b)
    assert evaluation["champion_version"] == "1"
    assert evaluation["champion_error"] is None
    # Runs a and b trained the same pipeline on the same data: the champion's holdout scores are what
    # run a's own evaluation found, and run b's are the same.
    assert evaluation["champion"] == pytest.approx(world["state"]["eval_a"]["challenger"])
    assert evaluation["challenger"] == pytest.approx(evaluation["champion"])
    metrics = client.get_run(run_b).data.metrics
    assert metrics["champion_holdout_roc_auc"] == pytest.approx(evaluation["champion"]["roc_auc"])
    page = mlflow.artifacts.load_text(evaluation["report_artifact_uri"])
    assert "champion v1" in page
    assert page.count("<polyline") == 2
    world["state"]["eval_b"] = evaluation


def test_failed_promotion_restores_the_previous_champion(world):
    evaluation = world["state"]["eval_b"]
    verdict = gate_verdict(evaluation["challenger"], evaluation["champion"], world["policy"].gate)
    registered = registry.register_challenger(
        world["state"]["b"]["run_id"], verdict=verdict, lineage=LINEAGE_B, name=MODEL
    )
    assert registered["version"] == "2"
    assert registered["created"] is True
    url = dead_url()
    with pytest.raises(DeployRolledBack, match=rf"v2 not served by {url} after 2s; champion restored to v1"):
        promote_champion(MODEL, 2, endpoint_url=url, timeout_s=2)
    client = world["client"]
    assert client.get_registered_model(MODEL).aliases == {"champion": "1", "challenger": "2"}
    assert client.get_model_version(MODEL, "2").tags["ct.previous_champion"] == "1"
    assert registry.get_champion(MODEL)["version"] == "1"


class _HealthStub(BaseHTTPRequestHandler):
    """Answers GET /health in the endpoint's documented shape from a script of versions.

    Stands in for two endpoint workers that pick up a new alias at different times: the answers
    alternate between them, and worker 2 lags. It tests promote_champion's waiting rule, not the
    endpoint (the lead's endpoint tests do that).
    """

    script: dict[str, Any] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        script = self.script
        script["calls"] += 1
        worker = script["calls"] % 2
        switched = script["clock"]() - script["start"] >= (script["lag_s"] if worker else 0.0)
        body = json.dumps(
            {
                "status": "ok",
                "model_name": MODEL,
                "model_version": script["new"] if switched else script["old"],
                "pid": 1000 + worker,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_stub() -> Iterator[tuple[str, dict[str, Any]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthStub)
    _HealthStub.script = {
        "calls": 0,
        "clock": time.monotonic,
        "start": time.monotonic(),
        "lag_s": 2.0,
        "old": "1",
        "new": "2",
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _HealthStub.script
    server.shutdown()
    server.server_close()


def test_promotion_waits_until_every_worker_serves_the_version(world, health_stub):
    url, script = health_stub
    script["start"] = time.monotonic()
    promoted = promote_champion(MODEL, 2, endpoint_url=url, timeout_s=30)
    assert promoted["changed"] is True
    assert promoted["previous_version"] == "1"
    # Only from about the moment the lagging worker switched (within one poll) do all answers agree, and
    # they must agree for STABLE_S before the promotion returns.
    assert time.monotonic() - script["start"] >= script["lag_s"] - _POLL_S + STABLE_S
    assert world["client"].get_registered_model(MODEL).aliases["champion"] == "2"
    again = promote_champion(MODEL, 2, endpoint_url=url, timeout_s=30)
    assert again["changed"] is False
    assert again["previous_version"] == "1"


def test_a_champion_whose_model_cannot_load_is_reported_not_fatal(world):
    client = world["client"]
    run_a = client.get_run(world["state"]["a"]["run_id"])
    # A version whose source holds no model (the reference folder): what a lost artifact looks like.
    broken = client.create_model_version(
        MODEL, source=f"{run_a.info.artifact_uri}/reference", run_id=run_a.info.run_id
    )
    client.set_registered_model_alias(MODEL, "champion", broken.version)
    try:
        evaluation = evaluate(world, world["state"]["b"]["run_id"])
    finally:
        client.set_registered_model_alias(MODEL, "champion", "2")
    assert evaluation["champion"] is None
    assert evaluation["champion_version"] == broken.version
    assert "MLmodel" in evaluation["champion_error"]
    verdict = gate_verdict(evaluation["challenger"], evaluation["champion"], world["policy"].gate)
    assert verdict["passed"]
    assert "no champion to compare with" in " ".join(verdict["reasons"])


def test_a_retry_after_a_killed_promotion_resumes_and_rolls_back(world):
    client = world["client"]
    # What an attempt promoting v1 over v2 leaves when it is killed while waiting for the endpoint:
    # the alias moved, the previous champion recorded, no confirmation.
    client.set_model_version_tag(MODEL, "1", "ct.previous_champion", "2")
    client.set_registered_model_alias(MODEL, "champion", "1")
    assert "ct.deploy_confirmed" not in client.get_model_version(MODEL, "1").tags
    url = dead_url()
    with pytest.raises(DeployRolledBack, match=r"v1 not served .* after 2s; champion restored to v2"):
        promote_champion(MODEL, 1, endpoint_url=url, timeout_s=2)
    assert client.get_registered_model(MODEL).aliases["champion"] == "2"


def test_a_confirmed_champion_is_not_rolled_back_when_the_endpoint_is_down(world):
    url = dead_url()
    with pytest.raises(DeployError, match=rf"v2 is the champion but {url} does not serve it") as caught:
        promote_champion(MODEL, 2, endpoint_url=url, timeout_s=2)
    assert not isinstance(caught.value, DeployRolledBack)
    assert world["client"].get_registered_model(MODEL).aliases["champion"] == "2"
