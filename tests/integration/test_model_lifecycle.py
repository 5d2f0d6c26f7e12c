"""A model's life against a real MLflow server: train, retrain (reused), evaluate, register, deploy, roll back.

The tests share one lake, one registered model and the runs they create, and pass in any order: each
asks for what it builds on through module-scoped fixtures (``trained_a``, ``registered_v1``, ...), which
make it once, whichever test asks first, with the same calls the train DAG makes (the library is
idempotent, so repeating them is safe). A test whose steps depend on where the ``champion`` alias
points, or on its absence, sets it at its start. Run b (another DAG run) is logged to an experiment of its own, so that run a's experiment
holds run a alone; the double registration goes to a registered model of its own, so that it starts
from none. They use their own lake and model names, so they do not meet the DAG tests of the session.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from services import publish_simulated_days

from continuous_training import modelstore, provenance
from continuous_training.config import ModelPolicy, Policy, load_contract, load_policy
from continuous_training.credentials import model_signing_key
from continuous_training.lake import (
    Lake,
)
from continuous_training.lineage import (
    CHAMPION,
    EVALUATION_REPORT_ARTIFACT,
    REFERENCE_ARTIFACT,
    TAG_CHAMPION_MOVE,
)
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
from continuous_training.model.ledger import read_ledger
from continuous_training.model.train import experiment_id, train_challenger
from continuous_training.model.training_set import build_training_set, select_training_days
from continuous_training.modelstore import alias_version
from continuous_training.ops.simulate import SimulatorConfig, generate_day
from continuous_training.settings import load_settings

pytestmark = pytest.mark.integration

MODEL = "lifecycle_test"
#: The experiment of run b (DAG run b), apart from run a's (named MODEL).
EXPERIMENT_B = f"{MODEL}_b"
#: The registered model of the double-registration test: it must start with no version.
MODEL_REGISTER_TWICE = f"{MODEL}_register_twice"
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
    publish_simulated_days(lake, DAYS, seed=11)
    base = load_policy()
    policy = dataclasses.replace(
        base,
        model=ModelPolicy(name=MODEL, params={**base.model.params, "max_iter": 60}),
        training=dataclasses.replace(base.training, reference_sample_rows=1000),
    )
    training_set = build_training_set(lake, select_training_days(lake, 28))
    client = mlflow.MlflowClient(mlflow_server)
    for name in (MODEL, MODEL_REGISTER_TWICE):
        # As the stack provisions its model: under MLflow's auth app an absent model reads as 403.
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name)
    return {
        "contract": contract,
        "lake": lake,
        "policy": policy,
        # The same pipeline and data; only the experiment (named after the model) differs.
        "policy_b": dataclasses.replace(policy, model=dataclasses.replace(policy.model, name=EXPERIMENT_B)),
        "training_set": training_set,
        "client": client,
    }


def train(world: dict[str, Any], lineage: dict[str, str], policy: Policy | None = None) -> dict[str, Any]:
    return train_challenger(
        world["training_set"],
        reason="manual",
        lineage=lineage,
        contract=world["contract"],
        policy=policy or world["policy"],
        lake=world["lake"],
    )


def evaluate(world: dict[str, Any], run_id: str) -> dict[str, Any]:
    return evaluate_challenger(run_id, contract=world["contract"], policy=world["policy"], lake=world["lake"])


def sign_as_stored(client: mlflow.MlflowClient, mv: Any) -> None:
    """Sign a version's files as stored, whatever they are (to reach the loader's checks past the signature)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(mv.name, mv.version), dst_path=tmp
        )
        manifest = provenance.file_manifest(Path(folder), "test")
    verdict = {"passed": True, "metric": "roc_auc", "challenger_value": 0.9}
    key = model_signing_key(load_settings())
    tags = provenance.version_tags(
        name=mv.name, version=mv.version, run_id=mv.run_id, manifest=manifest, verdict=verdict, key=key
    )
    for tag, value in tags.items():
        client.set_model_version_tag(mv.name, mv.version, tag, value)


def set_champion(client: mlflow.MlflowClient, version: str | None) -> None:
    """Point MODEL's ``champion`` alias at ``version``, or remove it (None; fine if there is none)."""
    if version is not None:
        client.set_registered_model_alias(MODEL, CHAMPION, version)
    elif alias_version(client, MODEL, CHAMPION) is not None:
        client.delete_registered_model_alias(MODEL, CHAMPION)


# ---------------------------------------------------------------------- the state the tests build on
# Each fixture makes its step once, whichever test asks first, with the calls the train DAG makes.


@pytest.fixture(scope="module")
def trained_a(world: dict[str, Any]) -> dict[str, Any]:
    """Run a: DAG run a trains on the training set (experiment MODEL; the first run there)."""
    return train(world, LINEAGE_A)


@pytest.fixture(scope="module")
def killed_attempt_b(world: dict[str, Any]) -> dict[str, Any]:
    """DAG run b: an attempt killed while training (its run left RUNNING), then the retry that trains.

    Returns ``{"stale": the killed attempt's run, "result": what the retry's train_challenger returned}``.
    """
    client, sha = world["client"], world["training_set"]["sha256"]
    exp_id = experiment_id(client, EXPERIMENT_B)
    stale = client.create_run(
        exp_id, tags={"ct.dag_run_id": LINEAGE_B["dag_run_id"], "ct.training_set_sha256": sha}
    )  # left RUNNING, as a SIGKILLed task leaves it
    return {"stale": stale, "result": train(world, LINEAGE_B, world["policy_b"])}


@pytest.fixture(scope="module")
def trained_b(killed_attempt_b: dict[str, Any]) -> dict[str, Any]:
    """Run b: the same pipeline on the same data as run a, from DAG run b (experiment EXPERIMENT_B)."""
    return killed_attempt_b["result"]


@pytest.fixture(scope="module")
def eval_a(world: dict[str, Any], trained_a: dict[str, Any]) -> dict[str, Any]:
    """Run a evaluated while MODEL has no champion (the first model), as the first train DAG run does."""
    set_champion(world["client"], None)  # a no-op: every champion comes after this (from registered_v1)
    return evaluate(world, trained_a["run_id"])


@pytest.fixture(scope="module")
def registered_v1(world: dict[str, Any], trained_a: dict[str, Any], eval_a: dict[str, Any]) -> dict[str, Any]:
    """Run a registered as MODEL v1 with its gate verdict (no champion to compare with)."""
    verdict = gate_verdict(eval_a["challenger"], None, world["policy"].gate)
    registered = registry.register_challenger(
        trained_a["run_id"], verdict=verdict, lineage=LINEAGE_A, name=MODEL
    )
    assert registered["version"] == "1"  # the tests below name it
    return registered


@pytest.fixture(scope="module")
def eval_b(world: dict[str, Any], trained_b: dict[str, Any], registered_v1: dict[str, Any]) -> dict[str, Any]:
    """Run b evaluated against champion v1 (as a deploy that the endpoint confirmed would leave it)."""
    set_champion(world["client"], "1")
    return evaluate(world, trained_b["run_id"])


@pytest.fixture(scope="module")
def registered_v2(world: dict[str, Any], trained_b: dict[str, Any], eval_b: dict[str, Any]) -> dict[str, Any]:
    """Run b registered as MODEL v2 with its gate verdict against champion v1."""
    verdict = gate_verdict(eval_b["challenger"], eval_b["champion"], world["policy"].gate)
    return registry.register_challenger(trained_b["run_id"], verdict=verdict, lineage=LINEAGE_B, name=MODEL)


# ---------------------------------------------------------------------------------------------- tests


def test_train_logs_a_complete_run(world, trained_a):
    result = trained_a
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

    model = modelstore.load_run_model(result["run_id"])  # checked against the run's manifest, skops
    sample = generate_day(DAYS[-1], SimulatorConfig(seed=11, rows_per_day=500)).head(5)
    scores = model.predict_proba(sample[world["contract"].feature_names])[:, 1]
    assert ((scores >= 0) & (scores <= 1)).all()

    reference = mlflow.artifacts.download_artifacts(
        run_id=result["run_id"], artifact_path=REFERENCE_ARTIFACT, tracking_uri=client.tracking_uri
    )
    frame = pd.read_parquet(reference)
    assert list(frame.columns) == [*world["contract"].feature_names, "defaulted"]
    assert len(frame) == min(1000, result["train_rows"])


def test_training_again_in_the_same_dag_run_reuses_the_run(world, trained_a):
    first = trained_a
    again = train(world, LINEAGE_A)
    assert again["run_id"] == first["run_id"]
    assert again["reused"] is True
    assert again["metrics"] == pytest.approx(first["metrics"])
    runs = world["client"].search_runs([first["experiment_id"]])
    assert [r.info.run_id for r in runs] == [first["run_id"]]


def test_a_killed_attempt_is_marked_failed_not_reused(world, killed_attempt_b):
    client = world["client"]
    stale, result = killed_attempt_b["stale"], killed_attempt_b["result"]
    assert result["run_id"] != stale.info.run_id
    assert result["reused"] is False
    assert client.get_run(stale.info.run_id).info.status == "FAILED"
    assert client.get_run(result["run_id"]).info.status == "FINISHED"


def test_evaluate_without_champion(world, trained_a, eval_a):
    run_id = trained_a["run_id"]
    evaluation = eval_a
    assert evaluation["champion"] is None
    assert evaluation["champion_version"] is None
    assert evaluation["champion_error"] is None
    assert evaluation["holdout_days"] == DAYS[-2:]
    assert set(evaluation["challenger"]) == {"roc_auc", "average_precision", "log_loss", "brier"}
    assert evaluation["challenger"]["roc_auc"] > 0.7  # the simulator's signal is learnable

    set_champion(world["client"], None)  # still the first model, whatever the other tests promoted since
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


def test_register_twice_gives_one_version(world, trained_a, eval_a):
    # A registered model of its own: MODEL gets more versions and a champion from the other tests.
    name = MODEL_REGISTER_TWICE
    run_id = trained_a["run_id"]
    verdict = gate_verdict(eval_a["challenger"], None, world["policy"].gate)
    assert verdict["passed"], verdict["reasons"]
    first = registry.register_challenger(run_id, verdict=verdict, lineage=LINEAGE_A, name=name)
    second = registry.register_challenger(run_id, verdict=verdict, lineage=LINEAGE_A, name=name)
    assert first["created"] is True
    assert second["created"] is False
    assert first["version"] == second["version"] == "1"
    client = world["client"]
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    mv = client.get_model_version(name, "1")
    assert mv.run_id == run_id
    assert mv.status == "READY"
    assert mv.tags["ct.training_set_sha256"] == world["training_set"]["sha256"]
    assert mv.tags["ct.dag_run_id"] == LINEAGE_A["dag_run_id"]
    assert mv.tags["ct.git_commit"] == "abc1234"
    assert json.loads(mv.tags["ct.gate_verdict"])["passed"] is True
    assert float(mv.tags["ct.gate_metric_value"]) == pytest.approx(verdict["challenger_value"])
    assert client.get_registered_model(name).aliases == {"challenger": "1"}
    assert registry.get_champion(name) is None


def test_version_loads_and_passes_the_smoke_test(trained_a, registered_v1):
    reference = modelstore.load_reference_sample(MODEL, 1)
    assert len(reference) == min(1000, trained_a["train_rows"])
    result = smoke_test(MODEL, 1, reference.head(100))
    assert result["rows"] == 100
    assert 0 < result["mean_score"] < 1
    with pytest.raises(DeployError, match="predict_proba failed.*credit_score"):
        smoke_test(MODEL, 1, reference.drop(columns=["credit_score"]).head(10))
    with pytest.raises(DeployError, match="no rows"):
        smoke_test(MODEL, 1, reference.head(0))


def test_first_promotion_to_a_dead_endpoint_removes_the_alias(world, registered_v1):
    set_champion(world["client"], None)  # the first promotion: no champion yet
    url = dead_url()
    with pytest.raises(
        DeployRolledBack, match=rf"{MODEL} v1 not served by {url} after 2s; champion alias removed"
    ):
        promote_champion(MODEL, 1, endpoint_url=url, timeout_s=2)
    assert "champion" not in world["client"].get_registered_model(MODEL).aliases
    assert registry.get_champion(MODEL) is None


def test_evaluate_against_the_champion_on_the_same_holdout(
    world, trained_a, trained_b, eval_a, registered_v1
):
    client = world["client"]
    # v1 as champion, as a deploy that the endpoint confirmed would leave it.
    client.set_registered_model_alias(MODEL, "champion", "1")
    champion = registry.get_champion(MODEL)
    assert champion["version"] == "1"
    assert champion["run_id"] == trained_a["run_id"]
    assert champion["days"] == DAYS
    assert champion["newest_day"] == DAYS[-1]
    assert champion["training_set_sha256"] == world["training_set"]["sha256"]

    run_b = trained_b["run_id"]
    evaluation = evaluate(world, run_b)
    assert evaluation["champion_version"] == "1"
    assert evaluation["champion_error"] is None
    # Runs a and b trained the same pipeline on the same data: the champion's holdout scores are what
    # run a's own evaluation found, and run b's are the same.
    assert evaluation["champion"] == pytest.approx(eval_a["challenger"])
    assert evaluation["challenger"] == pytest.approx(evaluation["champion"])
    metrics = client.get_run(run_b).data.metrics
    assert metrics["champion_holdout_roc_auc"] == pytest.approx(evaluation["champion"]["roc_auc"])
    page = mlflow.artifacts.load_text(evaluation["report_artifact_uri"])
    assert "champion v1" in page
    assert page.count("<polyline") == 2


def test_failed_promotion_restores_the_previous_champion(world, registered_v2):
    registered = registered_v2
    assert registered["version"] == "2"
    assert registered["created"] is True
    set_champion(world["client"], "1")  # v1 the champion, v2 the challenger, as registering v2 left it
    url = dead_url()
    by = {"dag_id": "train", "dag_run_id": "rollback_test", "task_id": "deploy"}
    with pytest.raises(DeployRolledBack, match=rf"v2 not served by {url} after 2s; champion restored to v1"):
        promote_champion(MODEL, 2, endpoint_url=url, timeout_s=2, moved_by=by)
    client = world["client"]
    assert client.get_registered_model(MODEL).aliases == {"champion": "1", "challenger": "2"}
    move = json.loads(client.get_model_version(MODEL, "2").tags["ct.champion_move"])
    assert (move["kind"], move["from_version"], move["confirmed"]) == ("deploy", "1", False)
    assert registry.get_champion(MODEL)["version"] == "1"
    # One ledger record: the deploy by that run, restored, with the endpoint's last answer and the
    # gate's verdict the version carries.
    entries = [
        e for e in read_ledger(Lake.from_settings(), MODEL) if e["actor"]["dag_run_id"] == "rollback_test"
    ]
    assert [(e["kind"], e["from_version"], e["to_version"], e["outcome"]) for e in entries] == [
        ("deploy", "1", "2", "restored")
    ]
    assert entries[0]["actor"] == {**by, "user": None}
    assert "champion restored to v1" in entries[0]["detail"]["restored"]
    assert entries[0]["gate"]["verdict"]["passed"] is True


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


def test_promotion_waits_until_every_worker_serves_the_version(world, registered_v2, health_stub):
    url, script = health_stub
    set_champion(world["client"], "1")  # the stub's workers serve v1 until they switch
    script["start"] = time.monotonic()
    promoted = promote_champion(MODEL, 2, endpoint_url=url, timeout_s=30)
    assert promoted["changed"] is True
    assert promoted["previous_version"] == "1"
    # Only from about the moment the lagging worker switched (within one poll) do all answers agree, and
    # they must agree for STABLE_S before the promotion returns.
    assert time.monotonic() - script["start"] >= script["lag_s"] - _POLL_S + STABLE_S
    assert world["client"].get_registered_model(MODEL).aliases["champion"] == "2"
    again = promote_champion(MODEL, 2, endpoint_url=url, timeout_s=30)  # a cleared deploy task
    assert again["changed"] is False
    assert again["previous_version"] == "1"
    assert again["ledger"] == promoted["ledger"]
    records = [e for e in read_ledger(Lake.from_settings(), MODEL) if e["key"] == promoted["ledger"]]
    assert len(records) == 1
    assert records[0]["outcome"] == "confirmed"
    assert records[0]["detail"]["served_after_s"] == promoted["served_after_s"]


def test_a_champion_whose_model_cannot_load_is_reported_not_fatal(world, trained_a, trained_b, registered_v2):
    client = world["client"]
    run_a = client.get_run(trained_a["run_id"])
    # A version whose source holds no model (the reference folder): what a lost artifact looks like.
    broken = client.create_model_version(
        MODEL, source=f"{run_a.info.artifact_uri}/reference", run_id=run_a.info.run_id
    )
    sign_as_stored(client, broken)  # signed, so that it fails at loading, not at its provenance
    client.set_registered_model_alias(MODEL, "champion", broken.version)
    try:
        evaluation = evaluate(world, trained_b["run_id"])
    finally:
        client.set_registered_model_alias(MODEL, "champion", "2")
    assert evaluation["champion"] is None
    assert evaluation["champion_version"] == broken.version
    assert "MLmodel" in evaluation["champion_error"]
    verdict = gate_verdict(evaluation["challenger"], evaluation["champion"], world["policy"].gate)
    assert verdict["passed"]
    assert "no champion to compare with" in " ".join(verdict["reasons"])


def test_a_retry_after_a_killed_promotion_resumes_and_rolls_back(world, registered_v2):
    client = world["client"]
    # What an attempt promoting v1 over v2 leaves when it is killed while waiting for the endpoint:
    # the alias moved, the previous champion recorded, no confirmation.
    move = {
        "kind": "deploy",
        "from_version": "2",
        "at": "2026-01-05T00:00:00+00:00",
        "confirmed": False,
        "actor": {"dag_id": "train", "dag_run_id": "killed", "task_id": "deploy"},
        "reason": "test",
    }
    client.set_model_version_tag(MODEL, "1", "ct.champion_move", json.dumps(move))
    client.set_registered_model_alias(MODEL, "champion", "1")
    url = dead_url()
    with pytest.raises(DeployRolledBack, match=r"v1 not served .* after 2s; champion restored to v2"):
        promote_champion(MODEL, 1, endpoint_url=url, timeout_s=2)
    assert client.get_registered_model(MODEL).aliases["champion"] == "2"


def test_a_confirmed_champion_is_not_rolled_back_when_the_endpoint_is_down(world, registered_v2):
    # What a promotion of v2 that the endpoint confirmed leaves (as in
    # test_promotion_waits_until_every_worker_serves_the_version): v2 the champion, tagged confirmed.
    client = world["client"]
    move = json.loads(client.get_model_version(MODEL, "2").tags[TAG_CHAMPION_MOVE])
    assert move["confirmed"] is True
    set_champion(client, "2")
    url = dead_url()
    with pytest.raises(DeployError, match=rf"v2 is the champion but {url} does not serve it") as caught:
        promote_champion(MODEL, 2, endpoint_url=url, timeout_s=2)
    assert not isinstance(caught.value, DeployRolledBack)
    assert world["client"].get_registered_model(MODEL).aliases["champion"] == "2"
