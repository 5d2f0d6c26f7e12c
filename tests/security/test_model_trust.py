"""Only models the pipeline trained may serve: against the real MLflow server (auth app, accounts), the
real endpoint (uvicorn, its workers as ``ct-endpoint``) and the SMTP sink.

Two attacks on a served champion, each checked at the endpoint and at the deploy task:

* another MLflow user, allowed to edit the registered model, registers a pickle model whose loading
  would write a marker file, copies the champion's provenance tags onto it and points ``champion`` at
  it: nobody unpickles it (no marker), the endpoint keeps serving the champion and reports it, on-call
  gets one mail;
* a file of a signed version is replaced on disk in the artifact store after registration: the deploy's
  smoke test and the endpoint refuse it (one mail for the version, whoever refused it first).

The pipeline's side is checked too: training records the manifest of the model's files (run artifact
and tags), registration checks the version against it and signs the provenance, and re-running either
changes nothing. The model and the endpoint are this module's own (``MODEL``), apart from the DAG tests'.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import mlflow
import pytest
import yaml
from services import (
    add_mlflow_user,
    free_port,
    grant_mlflow_permission,
    publish_simulated_days,
    start_endpoint,
    stop_process,
    wait_until,
)

from continuous_training import modelstore, provenance
from continuous_training.alerts.mail import model_refused_event_key
from continuous_training.config import ModelPolicy, load_contract, load_policy
from continuous_training.credentials import MLFLOW_ENDPOINT, mlflow_client_env
from continuous_training.lake import (
    Lake,
)
from continuous_training.lineage import (
    CHAMPION,
    MODEL_MANIFEST_ARTIFACT,
    TAG_MODEL_MANIFEST,
    TAG_MODEL_MANIFEST_SHA256,
    TAG_PROVENANCE,
    TAG_PROVENANCE_SIGNATURE,
)
from continuous_training.model import registry
from continuous_training.model.deploy import DeployRefused
from continuous_training.model.evaluate import evaluate_challenger, gate_verdict
from continuous_training.model.train import train_challenger
from continuous_training.model.training_set import build_training_set, select_training_days
from continuous_training.ops.mailsink import read_mail
from continuous_training.ops.simulate import SimulatorConfig, generate_day
from continuous_training.provenance import ModelRefusedError
from continuous_training.settings import load_settings

pytestmark = pytest.mark.integration

MODEL = "trust_test"
DAYS = [(date(2026, 5, 1) + timedelta(days=i)).isoformat() for i in range(6)]
LINEAGE_1 = {"dag_id": "train", "dag_run_id": "manual__2026-05-07T00:00:00+00:00", "git_commit": "abc1234"}
LINEAGE_2 = {"dag_id": "train", "dag_run_id": "manual__2026-05-08T00:00:00+00:00", "git_commit": "abc1234"}
#: The other MLflow user: allowed to edit the registered model (as a careless grant or a stolen
#: password would allow), not the pipeline.
INTRUDER = ("mallory-intruder", "intruder-password-0123456789")
#: How long the endpoint may take to see an alias move and refuse or load the version.
ENDPOINT_WAIT_S = 90.0


# ------------------------------------------------------------------------------ what the pipeline made


@pytest.fixture(scope="module")
def world(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Validated partitions, the policy with this module's model name, the pipeline's MLflow client."""
    contract = load_contract()
    lake = Lake(tmp_path_factory.mktemp("trust") / "lake")
    publish_simulated_days(lake, DAYS, seed=13)
    base = load_policy()
    policy = dataclasses.replace(
        base,
        model=ModelPolicy(name=MODEL, params={**base.model.params, "max_iter": 60}),
        training=dataclasses.replace(base.training, reference_sample_rows=300),
    )
    client = mlflow.MlflowClient(mlflow_server)
    # As the stack provisions its model (owned by ct-pipeline): under the auth app an absent one reads as 403.
    if not client.search_registered_models(f"name = '{MODEL}'"):
        client.create_registered_model(MODEL)
    return {
        "contract": contract,
        "lake": lake,
        "policy": policy,
        "training_set": build_training_set(lake, select_training_days(lake, 28)),
        "client": client,
        "settings": load_settings(),
    }


def _train_and_register(world: dict[str, Any], lineage: dict[str, str]) -> dict[str, Any]:
    """What the train DAG does, with this module's policy: train, evaluate, gate, register (signed)."""
    kwargs = {"contract": world["contract"], "policy": world["policy"], "lake": world["lake"]}
    trained = train_challenger(world["training_set"], reason="manual", lineage=lineage, **kwargs)
    evaluation = evaluate_challenger(trained["run_id"], **kwargs)
    verdict = gate_verdict(evaluation["challenger"], evaluation["champion"], world["policy"].gate)
    assert verdict["passed"], verdict["reasons"]
    verdict["champion_version"] = evaluation["champion_version"]
    registry.record_gate_verdict(trained["run_id"], verdict)
    registered = registry.register_challenger(trained["run_id"], verdict=verdict, lineage=lineage, name=MODEL)
    return {"trained": trained, "evaluation": evaluation, "verdict": verdict, "registered": registered}


@pytest.fixture(scope="module")
def v1(world: dict[str, Any]) -> dict[str, Any]:
    """The first model, trained and registered by the pipeline, and made the champion."""
    made = _train_and_register(world, LINEAGE_1)
    assert made["registered"]["version"] == "1"
    world["client"].set_registered_model_alias(MODEL, CHAMPION, "1")
    return made


@pytest.fixture(scope="module")
def v2(world: dict[str, Any], v1: dict[str, Any]) -> dict[str, Any]:
    """A second model, gated against champion v1 and registered (signed), not deployed."""
    world["client"].set_registered_model_alias(MODEL, CHAMPION, "1")
    made = _train_and_register(world, LINEAGE_2)
    assert int(made["registered"]["version"]) > 1  # v2, or later if another test registered first
    assert made["evaluation"]["champion_version"] == "1"
    assert made["evaluation"]["champion_error"] is None  # the signed champion loaded, verified
    return made


@pytest.fixture(scope="module")
def guarded_endpoint(world: dict[str, Any], v1: dict[str, Any], smtp_sink: Path) -> Iterator[str]:
    """The prediction endpoint serving MODEL's champion, as the stack runs it (read-only ct-endpoint)."""
    settings = world["settings"]
    experiment_id = world["client"].get_experiment_by_name(MODEL).experiment_id
    # What provisioning grants the endpoint on the stack's model, on this module's.
    grant_mlflow_permission(MLFLOW_ENDPOINT, "experiment", experiment_id, "READ")
    grant_mlflow_permission(MLFLOW_ENDPOINT, "registered_model", MODEL, "READ")
    port = free_port()
    url = f"http://{settings.host}:{port}"
    proc = start_endpoint(
        "endpoint-trust",
        settings,
        port,
        extra_env={
            **mlflow_client_env(settings, MLFLOW_ENDPOINT),
            "CT_MODEL_NAME": MODEL,
            "CT_ENDPOINT_PORT": str(port),
            "CT_ENDPOINT_URL": url,
            "CT_ENDPOINT_POLL_SECONDS": "1",
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        },
    )
    try:
        wait_until(lambda: _workers(url, lambda h: h["model_version"] == "1"), ENDPOINT_WAIT_S, "v1 served")
        yield url
    finally:
        stop_process(proc)


def _workers(url: str, condition: Callable[[dict[str, Any]], bool]) -> dict[int, dict[str, Any]] | None:
    """The /health of every endpoint worker if each satisfies ``condition`` (else None)."""
    seen: dict[int, dict[str, Any]] = {}
    # No keep-alive: uvicorn binds a connection to one worker, and every worker must answer.
    with httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        for _ in range(20):
            try:
                health = http.get(f"{url}/health").json()
            except httpx.HTTPError:
                return None
            if not condition(health):
                return None
            seen[health["pid"]] = health
            if len(seen) >= load_settings().endpoint_workers:
                return seen
    return None


def _refusal_mails(smtp_sink: Path, version: str) -> list[Any]:
    key = model_refused_event_key(MODEL, version)
    return [m for m in read_mail(smtp_sink) if m["X-CT-Event"] == key]


def _predicted_version(url: str, world: dict[str, Any]) -> str:
    rows = generate_day(DAYS[-1], SimulatorConfig(seed=99, rows_per_day=3), world["contract"])
    body = {"rows": json.loads(rows[world["contract"].feature_names].to_json(orient="records"))}
    response = httpx.post(f"{url}/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def _trust_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith("ct.")}


# ------------------------------------------------------------------------------------ the pipeline


def test_training_records_the_manifest_and_registration_signs_it(world, v1) -> None:
    client, run_id = world["client"], v1["trained"]["run_id"]
    run_tags = client.get_run(run_id).data.tags
    manifest = json.loads(run_tags[TAG_MODEL_MANIFEST])
    assert {"MLmodel", "model.skops"} <= set(manifest)
    assert run_tags[TAG_MODEL_MANIFEST_SHA256] == provenance.manifest_sha256(manifest)
    logged = mlflow.artifacts.load_text(f"runs:/{run_id}/{MODEL_MANIFEST_ARTIFACT}")
    assert json.loads(logged) == manifest

    # The manifest is what the store holds for the version: every file, hashed.
    with tempfile.TemporaryDirectory() as tmp:
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(MODEL, "1"), dst_path=tmp
        )
        assert provenance.file_manifest(Path(folder), "v1") == manifest
        spec = yaml.safe_load((Path(folder) / "MLmodel").read_text())
    assert spec["flavors"]["sklearn"]["serialization_format"] == "skops"

    tags = client.get_model_version(MODEL, "1").tags
    assert json.loads(tags[TAG_MODEL_MANIFEST]) == manifest
    payload = provenance.verify_provenance(
        tags, modelstore.model_verify_key(), name=MODEL, version="1", run_id=run_id
    )
    assert payload["manifest_sha256"] == run_tags[TAG_MODEL_MANIFEST_SHA256]
    assert payload["verdict"]["passed"] is True
    assert payload["verdict"]["metric"] == world["policy"].gate.metric
    assert payload["verdict"]["value"] == pytest.approx(v1["verdict"]["challenger_value"])


def test_training_and_registering_again_change_nothing(world, v1) -> None:
    client, run_id = world["client"], v1["trained"]["run_id"]
    before = _trust_tags(client.get_model_version(MODEL, "1").tags)
    artifacts = [a.path for a in client.list_artifacts(run_id, "provenance")]
    kwargs = {"contract": world["contract"], "policy": world["policy"], "lake": world["lake"]}
    again = train_challenger(world["training_set"], reason="manual", lineage=LINEAGE_1, **kwargs)
    assert again["run_id"] == run_id
    assert again["reused"] is True
    registered = registry.register_challenger(run_id, verdict=v1["verdict"], lineage=LINEAGE_1, name=MODEL)
    assert registered == {**v1["registered"], "created": False}
    assert _trust_tags(client.get_model_version(MODEL, "1").tags) == before  # same signature, same time
    assert (
        [a.path for a in client.list_artifacts(run_id, "provenance")]
        == artifacts
        == [MODEL_MANIFEST_ARTIFACT]
    )
    assert len(client.search_model_versions(f"name='{MODEL}' and run_id='{run_id}'")) == 1


# ------------------------------------------------------------------------------------- the attacks


#: What the other user runs, in a process of its own (its own MLflow credentials): a run of its own
#: experiment holding the model folder, a version of MODEL from it with the champion's provenance
#: tags copied onto it, and the champion alias. Prints the version and the run.
INTRUDER_SCRIPT = """
import json, sys, time
from mlflow import MlflowClient
uri, model, folder, copied = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
client = MlflowClient(uri)
run = client.create_run(client.create_experiment(f"intruder-{time.time_ns()}"))
client.log_artifacts(run.info.run_id, folder, "model")
client.set_terminated(run.info.run_id)
mv = client.create_model_version(model, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
while client.get_model_version(model, mv.version).status != "READY":
    time.sleep(0.5)
for tag, value in copied.items():
    client.set_model_version_tag(model, mv.version, tag, value)
client.set_registered_model_alias(model, "champion", mv.version)
print(json.dumps({"version": mv.version, "run_id": run.info.run_id}))
"""


def run_as_intruder(world: dict[str, Any], folder: Path, copied: dict[str, str]) -> dict[str, str]:
    """Register ``folder`` as a version of MODEL and make it the champion, as the other user."""
    import subprocess
    import sys

    add_mlflow_user(*INTRUDER, {("registered_model", MODEL): "EDIT"})
    env = {
        **os.environ,
        "MLFLOW_TRACKING_USERNAME": INTRUDER[0],
        "MLFLOW_TRACKING_PASSWORD": INTRUDER[1],
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            INTRUDER_SCRIPT,
            world["client"].tracking_uri,
            MODEL,
            str(folder),
            json.dumps(copied),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


class WritesMarker:
    """Unpickling it writes ``marker``: a harmless stand-in for a hostile pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


def _pickle_model_folder(folder: Path, marker: Path) -> None:
    import pickle

    folder.mkdir(parents=True)
    (folder / "model.pkl").write_bytes(pickle.dumps(WritesMarker(str(marker))))
    mlmodel = {
        "flavors": {
            "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.pkl"},
            "sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle", "code": None},
        }
    }
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def test_a_pickle_model_moved_in_by_another_user_is_never_loaded(
    world, v1, guarded_endpoint, smtp_sink, tmp_path_factory
) -> None:
    import pickle

    marker = tmp_path_factory.mktemp("attack") / "marker"
    check = marker.with_name("marker-check")
    pickle.loads(pickle.dumps(WritesMarker(str(check))))  # noqa: S301 - the payload is live
    assert check.read_text() == "unpickled"

    folder = tmp_path_factory.mktemp("evil") / "model"
    _pickle_model_folder(folder, marker)
    trust = (TAG_PROVENANCE, TAG_PROVENANCE_SIGNATURE, TAG_MODEL_MANIFEST, TAG_MODEL_MANIFEST_SHA256)
    copied = {k: v for k, v in world["client"].get_model_version(MODEL, "1").tags.items() if k in trust}
    evil = SimpleNamespace(**run_as_intruder(world, folder, copied))
    assert world["client"].get_registered_model(MODEL).aliases[CHAMPION] == evil.version
    try:
        refused = wait_until(
            lambda: _workers(
                guarded_endpoint,
                lambda h: (
                    h["model_version"] == "1"
                    and f"refused {MODEL} version {evil.version}" in (h["last_error"] or "")
                ),
            ),
            ENDPOINT_WAIT_S,
            "every endpoint worker to refuse the version",
        )
        for health in refused.values():
            assert "names model_version '1'" in health["last_error"]  # the copied signature is v1's
        assert _predicted_version(guarded_endpoint, world) == "1"
        wait_until(lambda: _refusal_mails(smtp_sink, evil.version), 60, "the refusal mail")

        # The deploy task refuses it too, before the smoke test, and mails nothing more.
        from continuous_training.adapter import steps

        lineage = {"dag_id": "train", "dag_run_id": "manual__attack", "git_commit": "x"}
        with pytest.raises(DeployRefused, match=f"model {MODEL} version {evil.version}: refused"):
            steps.deploy({"name": MODEL, "version": evil.version, "run_id": evil.run_id}, lineage)
        with pytest.raises(ModelRefusedError):
            modelstore.load_model_version(MODEL, evil.version)
        time.sleep(3)  # a few more polls of both workers
    finally:
        world["client"].set_registered_model_alias(MODEL, CHAMPION, "1")

    assert not marker.exists(), "the pickle model was unpickled"
    mails = _refusal_mails(smtp_sink, evil.version)
    assert len(mails) == 1, [m["Subject"] for m in mails]
    assert mails[0]["Subject"] == f"[ct] Model refused: {MODEL} v{evil.version} will not serve"
    assert "names model_version" in mails[0].get_body(preferencelist=("html",)).get_content()


def test_an_artifact_altered_after_registration_is_refused_at_deploy_and_at_the_endpoint(
    world, v1, v2, guarded_endpoint, smtp_sink
) -> None:
    from continuous_training.adapter import steps

    client, settings = world["client"], world["settings"]
    client.set_registered_model_alias(MODEL, CHAMPION, "1")
    version = v2["registered"]["version"]
    location = client.get_model_version_download_uri(MODEL, version)
    assert location.startswith("mlflow-artifacts:/"), location
    stored = settings.mlflow_dir / "artifacts" / location.removeprefix("mlflow-artifacts:/") / "model.skops"
    assert stored.is_file(), stored
    v1_file = (
        settings.mlflow_dir
        / "artifacts"
        / client.get_model_version_download_uri(MODEL, "1").removeprefix("mlflow-artifacts:/")
    )
    # A valid skops model, only not the one v2 signed: the digest, not the format, must catch it.
    shutil.copyfile(v1_file / "model.skops", stored)

    lineage = {"dag_id": "train", "dag_run_id": LINEAGE_2["dag_run_id"], "git_commit": "abc1234"}
    with pytest.raises(
        DeployRefused,
        match=rf"smoke test of {MODEL} v{version}: model {MODEL} version {version}: refused: file model.skops has sha256",
    ):
        steps.deploy(v2["registered"], lineage)
    assert client.get_registered_model(MODEL).aliases[CHAMPION] == "1"  # the deploy moved nothing
    assert len(_refusal_mails(smtp_sink, version)) == 1

    # Registering the run again (a cleared task) checks the files again, and refuses to re-sign.
    with pytest.raises(ModelRefusedError, match="file model.skops has sha256"):
        registry.register_challenger(
            v2["trained"]["run_id"], verdict=v2["verdict"], lineage=LINEAGE_2, name=MODEL
        )

    # Someone moves the alias by hand: the endpoint refuses the version and keeps serving v1.
    client.set_registered_model_alias(MODEL, CHAMPION, version)
    try:
        refused = wait_until(
            lambda: _workers(
                guarded_endpoint,
                lambda h: (
                    h["model_version"] == "1"
                    and f"refused {MODEL} version {version}" in (h["last_error"] or "")
                ),
            ),
            ENDPOINT_WAIT_S,
            "every endpoint worker to refuse the altered version",
        )
        for health in refused.values():
            assert "file model.skops has sha256" in health["last_error"]
        assert _predicted_version(guarded_endpoint, world) == "1"
        time.sleep(3)
    finally:
        client.set_registered_model_alias(MODEL, CHAMPION, "1")
    assert len(_refusal_mails(smtp_sink, version)) == 1  # the deploy's; the endpoint's used the same event
