"""Safe releases against the real parts: the rollback DAG (``dag.test()``), the ledger, the endpoint.

The module works on a registered model of its own (``release_test``), a lake of its own and an endpoint
of its own (uvicorn with the stack's worker count, on a free port, serving this model's ``champion``),
so that nothing here changes what the loop's DAG tests assert on. Three versions are trained on
simulated days with the project's pipeline, gated, registered and signed as the train DAG does it;
v1 then v2 are deployed through the deploy step against the endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest
from services import (
    free_port,
    own_model_env,
    publish_simulated_days,
    start_endpoint,
    stop_process,
    train_and_register,
    wait_until,
)
from services import lineage as _lineage

from continuous_training.lake import Lake
from continuous_training.model import ledger
from continuous_training.ops.mailsink import read_mail
from continuous_training.settings import load_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "release_test"
DAYS = [(date(2026, 5, 1) + timedelta(days=i)).isoformat() for i in range(6)]


def _dag_run(dag_id: str, run_id: str, user: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(dag_id=dag_id, run_id=run_id, triggering_user_name=user)


@pytest.fixture(scope="module")
def release(mlflow_server, smtp_sink, airflow_db, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """This module's model, lake and endpoint, with v1 and v2 deployed (v2 the champion) and v3 registered."""
    home = tmp_path_factory.mktemp("release")
    lake_root = home / "lake"
    port = free_port()
    env = own_model_env(MODEL, lake_root, port)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        settings = load_settings()
        lake = Lake(lake_root)
        publish_simulated_days(lake, DAYS, seed=23)
        client = mlflow.MlflowClient(mlflow_server)
        if not client.search_registered_models(f"name = '{MODEL}'"):
            client.create_registered_model(MODEL)  # as the stack provisions its model
        proc = start_endpoint("endpoint-release", settings, port)
        try:
            from continuous_training.adapter import steps

            registered = {}
            for n, max_iter in ((1, 40), (2, 60), (3, 80)):
                run = f"release__{n}"
                # Each one gated against the champion of its time, as successive train runs are.
                registered[n] = train_and_register(lake, run, max_iter)
                assert registered[n]["version"] == str(n)
                if n < 3:
                    steps.deploy(registered[n], _lineage(run), _dag_run("train", run, user=None))
            yield {
                "client": client,
                "lake": lake,
                "url": settings.endpoint_url,
                "mail": smtp_sink,
                "registered": registered,
                "env": env,
            }
        finally:
            stop_process(proc)


def run_rollback(conf: dict[str, Any]) -> tuple[str, dict[str, str]]:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags" / "rollback.py")).dags["rollback"]
    dag_run = dag.test(run_conf=conf)
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    return str(getattr(dag_run.state, "value", dag_run.state)), states | {"__run_id__": dag_run.run_id}


@pytest.fixture(autouse=True)
def _release_env(request, monkeypatch):
    """Each test runs with the module's model, lake and endpoint (the fixture's environment)."""
    if "release" in request.fixturenames:
        for key, value in request.getfixturevalue("release")["env"].items():
            monkeypatch.setenv(key, value)


def champion(release) -> str:
    return release["client"].get_model_version_by_alias(MODEL, "champion").version


def served_versions(url: str, asks: int = 12) -> set[str]:
    """What the endpoint's workers serve (fresh connections, so each worker gets asked)."""
    seen = set()
    for _ in range(asks):
        with httpx.Client(timeout=5) as http:
            seen.add(http.get(f"{url}/health").json()["model_version"])
    return seen


def entries() -> list[dict[str, Any]]:
    return ledger.read_ledger(Lake.from_settings(), MODEL)


def test_deploys_are_in_the_ledger_with_their_gate_and_outcome(release):
    deploys = [e for e in entries() if e["kind"] == "deploy"]
    assert [(e["from_version"], e["to_version"], e["outcome"]) for e in deploys][:2] == [
        (None, "1", "confirmed"),
        ("1", "2", "confirmed"),
    ]
    second = deploys[1]
    assert second["actor"]["dag_run_id"] == "release__2"
    assert second["actor"]["task_id"] == "deploy"
    assert second["gate"]["verdict"]["passed"] is True
    assert second["gate"]["verdict"]["metric"] == "roc_auc"
    assert second["detail"]["served_after_s"] >= 0
    assert second["reason"] == "test release__2"


def test_the_rollback_dag_returns_to_the_previous_champion(release):
    assert champion(release) == "2"
    state, tasks = run_rollback({"reason": "v2 answers too slowly for the partner API"})
    assert state == "success", tasks
    assert champion(release) == "1"
    assert served_versions(release["url"]) == {"1"}
    (entry,) = [e for e in entries() if e["kind"] == "rollback"]
    assert (entry["from_version"], entry["to_version"], entry["outcome"]) == ("2", "1", "confirmed")
    assert entry["actor"] == {
        "dag_id": "rollback",
        "dag_run_id": tasks["__run_id__"],
        "task_id": "move_alias",
        "user": "dag_test",  # dag.test()'s triggering user; the UI's logged-in user in a real run
    }
    assert entry["reason"] == "v2 answers too slowly for the partner API"
    assert entry["detail"]["smoke_test"]["rows"] > 0
    (mail,) = [
        m for m in read_mail(release["mail"]) if m["Subject"].startswith("[ct] Rollback: release_test")
    ]
    assert "v2 -&gt; v1" in mail["Subject"] or "v2 -> v1" in mail["Subject"]
    text = mail.get_body(preferencelist=("html",)).get_content()
    assert entry["key"] in text
    assert "/ct/models" in text

    # Cleared move and notify tasks: the alias stays, no second record, no second mail.
    from continuous_training.adapter import steps

    checked = {
        "name": MODEL,
        "version": "1",
        "from_version": "2",
        "forced": False,
        "failed_checks": [],
        "smoke_test": entry["detail"]["smoke_test"],
    }
    again = steps.rollback_move(checked, "cleared", _dag_run("rollback", tasks["__run_id__"], "dag_test"))
    assert again["ledger"] == entry["key"]
    assert again["changed"] is False
    assert steps.notify_rollback(again, _dag_run("rollback", tasks["__run_id__"])) is False
    assert len([e for e in entries() if e["kind"] == "rollback"]) == 1
    assert (
        len([m for m in read_mail(release["mail"]) if m["Subject"].startswith("[ct] Rollback: release_test")])
        == 1
    )


def test_a_version_that_failed_a_live_check_needs_force(release):
    from continuous_training.lineage import TAG_SHADOW_VERDICT
    from continuous_training.model.rollback import RollbackRefused, choose_target

    verdict = {"passed": False, "reasons": ["agreement 0.42 below 0.9"], "rows": 1200}
    release["client"].set_model_version_tag(MODEL, "3", TAG_SHADOW_VERDICT, json.dumps(verdict))
    before = champion(release)
    with pytest.raises(
        RollbackRefused, match=r"v3 did not pass every gate: its shadow verdict failed: agreement"
    ):
        choose_target(release["lake"], MODEL, 3)
    state, tasks = run_rollback({"reason": "try v3", "version": 3})
    assert state == "failed"
    assert tasks["choose_version"] == "failed"
    assert tasks["move_alias"] == "upstream_failed"
    assert champion(release) == before

    state, tasks = run_rollback(
        {"reason": "v3 is the only one that handles the new product", "version": 3, "force": True}
    )
    assert state == "success", tasks
    assert champion(release) == "3"
    forced = [e for e in entries() if e["kind"] == "rollback" and e["to_version"] == "3"]
    assert len(forced) == 1
    assert forced[0]["detail"]["forced"] is True
    assert "forced although its shadow verdict failed" in forced[0]["reason"]


def test_an_unsigned_version_is_refused_even_with_force(release, tmp_path):
    client = release["client"]
    source = client.get_model_version(MODEL, "1")
    # The same files as v1, registered by hand: no signed provenance of the pipeline.
    folder = mlflow.artifacts.download_artifacts(
        client.get_model_version_download_uri(MODEL, source.version), dst_path=str(tmp_path)
    )
    run = client.create_run(client.get_run(source.run_id).info.experiment_id)
    client.log_artifacts(run.info.run_id, folder, "model")
    client.set_terminated(run.info.run_id)
    unsigned = client.create_model_version(
        MODEL, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    wait_until(
        lambda: client.get_model_version(MODEL, unsigned.version).status == "READY",
        30,
        "the hand-made version to be ready",
    )
    before = champion(release)
    state, tasks = run_rollback(
        {"reason": "hand-made version", "version": int(unsigned.version), "force": True}
    )
    assert state == "failed"
    assert tasks["choose_version"] == "success"
    assert tasks["check_version"] == "failed"
    assert champion(release) == before
    assert not [e for e in entries() if e["to_version"] == unsigned.version]


# ------------------------------------------------------------------------------------------- watch


def release_policy(tmp_path: Path, monkeypatch, **release: Any) -> None:
    """Use the shipped config with these ``release:`` values (CT_CONFIG_DIR for this test)."""
    import shutil

    import yaml

    folder = tmp_path / "config"
    shutil.copytree(load_settings().config_dir, folder)
    policy = yaml.safe_load((folder / "policy.yaml").read_text())
    policy["release"] = {**(policy.get("release") or {}), **release}
    (folder / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    monkeypatch.setenv("CT_CONFIG_DIR", str(folder))


@pytest.fixture
def quick_watch(release, tmp_path, monkeypatch) -> dict[str, Any]:
    """The shipped config with a watch of 15 s on 100 rows, checked every 2 s."""
    release_policy(
        tmp_path, monkeypatch, watch=True, watch_minutes=0.25, watch_min_rows=100, watch_poll_seconds=2
    )
    return release


def traffic(url: str, day: str, rows: int, seed: int, batch_size: int = 50) -> None:
    from continuous_training.ops.simulate import SimulatorConfig, client_requests, send_traffic

    frame = client_requests(day, SimulatorConfig(seed=seed, rows_per_day=rows)).head(rows)
    sent = send_traffic(url, frame, batch_size=batch_size)
    assert sent["failed_requests"] == 0, sent


def promote_by_hand(version: str, run: str) -> dict[str, Any]:
    """Move champion as the train DAG's deploy does, past its smoke test (what the watch is for)."""
    from continuous_training.model.deploy import move_champion

    return move_champion(
        MODEL,
        version,
        kind=ledger.DEPLOY,
        actor={"dag_id": "train", "dag_run_id": run, "task_id": "deploy"},
        reason=f"release test {run}",
        endpoint_url=load_settings().endpoint_url,
    )


def run_watch() -> tuple[str, dict[str, str]]:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags" / "watch.py")).dags["watch"]
    dag_run = dag.test()
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    return str(getattr(dag_run.state, "value", dag_run.state)), states


def watch_tag(release, version: str) -> dict[str, Any]:
    from continuous_training.lineage import TAG_WATCH_VERDICT

    return json.loads(release["client"].get_model_version(MODEL, version).tags[TAG_WATCH_VERDICT])


def altered_version(release, label: str, alter) -> str:
    """v2's own pipeline with its boosted trees altered by ``alter(estimator)``, logged, registered and
    signed as the pipeline would (a version the gate passed, that behaves differently live)."""
    from continuous_training.model.registry import sign_version
    from continuous_training.model.train import model_requirements
    from continuous_training.modelstore import SKOPS_TRUSTED_TYPES, load_run_model

    client = release["client"]
    pipeline = load_run_model(release["registered"][2]["run_id"])
    alter(pipeline.steps[-1][1])
    experiment = client.get_run(release["registered"][2]["run_id"]).info.experiment_id
    with mlflow.start_run(experiment_id=experiment, run_name=f"release test: {label}"):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            serialization_format="skops",
            skops_trusted_types=list(SKOPS_TRUSTED_TYPES),
            pip_requirements=model_requirements(),
            pyfunc_predict_fn="predict_proba",
        )
    version = str(mlflow.register_model(info.model_uri, MODEL).version)
    wait_until(lambda: client.get_model_version(MODEL, version).status == "READY", 30, f"{label} to be ready")
    sign_version(MODEL, version, verdict={"passed": True, "metric": "roc_auc", "forced": False})
    return version


def nan_version(release) -> str:
    """A version whose baseline is NaN: every score NaN."""

    def alter(estimator) -> None:
        estimator._baseline_prediction = np.full_like(estimator._baseline_prediction, np.nan)

    return altered_version(release, "a NaN model", alter)


#: How many times slower the slow version is made: each tree repeated this many times.
SLOWDOWN = 25


def slow_version(release) -> str:
    """A version with the same scores (to 1e-13) from SLOWDOWN times as many trees: each tree repeated,
    its leaf values divided by SLOWDOWN, so the sum is unchanged and only the time to score grows."""
    import copy

    def alter(estimator) -> None:
        def scaled(tree):
            tree = copy.deepcopy(tree)
            tree.nodes["value"] /= SLOWDOWN
            return tree

        estimator._predictors = [
            [scaled(tree) for tree in round_] for round_ in estimator._predictors for _ in range(SLOWDOWN)
        ]

    return altered_version(release, "a slow model", alter)


def test_the_watch_leaves_a_good_champion_alone(quick_watch):
    release = quick_watch
    before = champion(release)
    good = "1" if before == "2" else "2"  # a gated, signed version, not the champion
    traffic(release["url"], DAYS[-1], 150, seed=1)  # the champion before, for comparison
    promote_by_hand(good, "release__watch_good")
    traffic(release["url"], DAYS[-1], 300, seed=2)
    state, tasks = run_watch()
    assert state == "success", tasks
    assert champion(release) == good
    verdict = watch_tag(release, good)
    assert verdict["passed"]
    assert verdict["judged"]
    assert verdict["previous_version"] == before
    assert verdict["figures"]["rows"] >= 300
    assert verdict["figures"]["previous_rows"] >= 150
    assert verdict["figures"]["error_rate"] == 0
    assert not [e for e in entries() if e["kind"] == "auto_rollback"]


def test_the_watch_rolls_back_a_champion_that_scores_nan(quick_watch, tmp_path):
    release = quick_watch
    previous = champion(release)
    bad = nan_version(release)
    promote_by_hand(bad, "release__watch_nan")
    assert served_versions(release["url"]) == {bad}
    traffic(release["url"], DAYS[-1], 200, seed=3)
    state, tasks = run_watch()
    assert state == "success", tasks
    assert champion(release) == previous
    assert served_versions(release["url"]) == {previous}
    verdict = watch_tag(release, bad)
    assert not verdict["passed"]
    assert verdict["figures"]["error_rate"] == 1.0
    (entry,) = [e for e in entries() if e["kind"] == "auto_rollback" and e["from_version"] == bad]
    assert (entry["to_version"], entry["outcome"]) == (previous, "confirmed")
    assert entry["actor"]["dag_id"] == "watch"
    assert entry["actor"]["task_id"] == "watch_champion"
    assert "no finite score on 100.00%" in entry["reason"]
    assert entry["detail"]["figures"]["error_rate"] == 1.0
    (mail,) = [
        m for m in read_mail(release["mail"]) if m["Subject"].startswith("[ct] Auto-rollback: release_test")
    ]
    assert f"v{bad} -> v{previous}" in mail["Subject"]
    text = mail.get_body(preferencelist=("html",)).get_content()
    assert "error_rate" in text
    # Rolled back on live signals: returning to it needs force.
    from continuous_training.model.rollback import RollbackRefused, choose_target

    with pytest.raises(RollbackRefused, match="did not pass every gate"):
        choose_target(release["lake"], MODEL, bad)
    # A second watch run finds nothing to watch (the newest move is the rollback): no second move or mail.
    state, tasks = run_watch()
    assert tasks["watch_champion"] == "skipped"
    assert len([e for e in entries() if e["kind"] == "auto_rollback"]) == 1


def test_the_watch_rolls_back_a_champion_whose_latency_is_inflated(quick_watch):
    release = quick_watch
    previous = champion(release)
    slow = slow_version(release)
    traffic(release["url"], DAYS[-1], 150, seed=6, batch_size=5)  # the previous champion's latency
    promote_by_hand(slow, "release__watch_slow")
    traffic(release["url"], DAYS[-1], 200, seed=7, batch_size=5)
    state, tasks = run_watch()
    assert state == "success", tasks
    assert champion(release) == previous
    verdict = watch_tag(release, slow)
    assert not verdict["passed"]
    figures = verdict["figures"]
    assert figures["p99_ms"] > 3 * figures["previous_p99_ms"], figures
    assert figures["error_rate"] == 0  # the same scores, only slower: the latency is the breach
    assert len(verdict["breaches"]) == 1
    assert "p99 latency" in verdict["breaches"][0]
    (entry,) = [e for e in entries() if e["kind"] == "auto_rollback" and e["from_version"] == slow]
    assert (entry["to_version"], entry["outcome"]) == (previous, "confirmed")
    assert "p99 latency" in entry["reason"]


# ------------------------------------------------------------------------------------------ shadow


@pytest.fixture
def quick_shadow(release, tmp_path, monkeypatch) -> dict[str, Any]:
    """The shipped config with a shadow stage on 100 rows, waited for at most a minute, checked every 2 s."""
    release_policy(
        tmp_path,
        monkeypatch,
        shadow=True,
        shadow_share=1.0,
        shadow_min_rows=100,
        shadow_max_wait_minutes=1,
        shadow_poll_seconds=2,
        # Two versions of the same pipeline with 40 to 80 boosting rounds: alike, not identical.
        shadow_min_agreement=0.8,
        shadow_max_score_shift=0.15,
    )
    return release


def make_challenger(release, version: str) -> None:
    """Point ``challenger`` at the version and wait until every endpoint worker shadow-scores with it."""
    release["client"].set_registered_model_alias(MODEL, "challenger", version)

    def shadowing() -> bool:
        # A new connection per call: one kept-alive connection would ask the same worker every time.
        return all(
            httpx.get(f"{release['url']}/health", headers={"Connection": "close"}, timeout=5)
            .json()
            .get("challenger_version")
            == version
            for _ in range(16)
        )

    wait_until(shadowing, 60, f"every endpoint worker to shadow-score with v{version}")


#: The train DAG's shadow task between a register stand-in (the version from the run's conf) and an
#: approve stand-in, parsed from a file of its own.
SHADOW_DAG = """
import pendulum
from airflow.sdk import dag, task

from continuous_training.adapter.release import ShadowChallenger


@dag(dag_id="shadow_stage", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
def shadow_stage():
    @task(task_id="register")
    def register(dag_run=None):
        return dag_run.conf["registered"]

    @task(task_id="approve")
    def approve():
        return "reached"

    register() >> ShadowChallenger(task_id="shadow", register_task_id="register") >> approve()


shadow_stage()
"""


def run_shadow(registered: dict[str, Any], folder: Path) -> tuple[str, dict[str, str], Any]:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    folder = folder / "shadow_dags"
    folder.mkdir(exist_ok=True)
    (folder / "shadow_stage.py").write_text(SHADOW_DAG)
    # dag.test() runs the serialized DAG: written to the metadata DB as the dag-processor would.
    bag = BundleDagBag(dag_folder=str(folder), bundle_path=folder, bundle_name="dags-folder")
    assert not bag.import_errors, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["shadow_stage"]
    dag_run = dag.test(run_conf={"registered": registered})
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    states = {task_id: str(getattr(ti.state, "value", ti.state)) for task_id, ti in tis.items()}
    return (
        str(getattr(dag_run.state, "value", dag_run.state)),
        states,
        tis["shadow"].xcom_pull(task_ids="shadow"),
    )


def shadow_tag(release, version: str) -> dict[str, Any]:
    from continuous_training.lineage import TAG_SHADOW_VERDICT

    return json.loads(release["client"].get_model_version(MODEL, version).tags[TAG_SHADOW_VERDICT])


def answers(url: str, day: str, rows: int, seed: int) -> list[dict[str, Any]]:
    """The endpoint's answers to simulated one-row requests, with the version header of each."""
    from continuous_training.ops.simulate import SimulatorConfig, client_requests, to_json_rows

    frame = client_requests(day, SimulatorConfig(seed=seed, rows_per_day=rows)).head(rows)
    out = []
    with httpx.Client(timeout=10) as http:
        for record in to_json_rows(frame):
            response = http.post(f"{url}/predict", json={"rows": [record]})
            out.append(
                {
                    "status": response.status_code,
                    "version": response.headers.get("X-Model-Version"),
                    "scores": response.json().get("predictions"),
                }
            )
    return out


def test_the_shadow_stage_passes_a_challenger_that_agrees_with_the_champion(quick_shadow, tmp_path):
    release = quick_shadow
    serving = champion(release)
    candidate = next(v for v in ("1", "2", "3") if v != serving)
    make_challenger(release, candidate)
    traffic(release["url"], DAYS[-1], 150, seed=4)
    state, tasks, result = run_shadow(
        {**release["registered"][int(candidate)], "version": candidate}, tmp_path
    )
    assert state == "success", tasks
    assert tasks["approve"] == "success"
    verdict = shadow_tag(release, candidate)
    assert verdict["passed"], verdict
    assert verdict["rows"] >= 100
    assert verdict["error_rate"] == 0
    assert verdict["agreement"] >= 0.8
    assert verdict["champion"] == serving
    assert result["verdict"]["rows"] == verdict["rows"]
    assert champion(release) == serving  # the stage judges; deploy moves the alias
    assert not [e for e in entries() if e["kind"] == "blocked" and e["to_version"] == candidate]


def test_the_shadow_stage_blocks_a_failing_challenger_without_touching_the_champions_answers(
    quick_shadow, tmp_path
):
    release = quick_shadow
    serving = champion(release)
    bad = nan_version(release)
    make_challenger(release, bad)
    served = answers(release["url"], DAYS[-1], 120, seed=5)
    # The champion answered every request itself, with finite scores, while v{bad} failed beside it.
    assert {a["status"] for a in served} == {200}
    assert {a["version"] for a in served} == {serving}
    assert all(np.isfinite(a["scores"]).all() for a in served)
    state, tasks, result = run_shadow({"name": MODEL, "version": bad, "run_id": "shadow-nan"}, tmp_path)
    assert state == "success", tasks  # a blocked version is a decision, not a failure
    assert tasks["approve"] == "skipped"
    verdict = shadow_tag(release, bad)
    assert not verdict["passed"]
    assert verdict["error_rate"] == 1.0
    assert "the challenger failed on 100.00%" in verdict["reasons"][0]
    (entry,) = [e for e in entries() if e["kind"] == "blocked" and e["to_version"] == bad]
    assert (entry["from_version"], entry["outcome"]) == (serving, "blocked")
    assert entry["actor"]["task_id"] == "shadow"
    assert entry["gate"]["shadow"]["passed"] is False
    assert "shadow verdict: the challenger failed" in entry["reason"]
    assert release["client"].get_registered_model(MODEL).aliases.get("challenger") is None
    assert champion(release) == serving
    (mail,) = [
        m for m in read_mail(release["mail"]) if m["Subject"].startswith("[ct] Blocked by shadow verdict")
    ]
    assert f"{MODEL} v{bad}" in mail["Subject"]
    assert "/ct/models" in mail.get_body(preferencelist=("html",)).get_content()

    # Cleared: the recorded verdict is the answer; no second record, no second mail.
    state, tasks, _ = run_shadow({"name": MODEL, "version": bad, "run_id": "shadow-nan"}, tmp_path)
    assert tasks["approve"] == "skipped"
    assert len([e for e in entries() if e["kind"] == "blocked" and e["to_version"] == bad]) == 1
    assert (
        len([m for m in read_mail(release["mail"]) if m["Subject"].startswith("[ct] Blocked by shadow")]) == 1
    )
    # Blocked on live traffic: the rollback DAG needs force to return to it.
    from continuous_training.model.rollback import RollbackRefused, choose_target

    with pytest.raises(RollbackRefused, match="its shadow verdict failed"):
        choose_target(release["lake"], MODEL, bad)


def test_the_models_page_shows_each_versions_live_checks_and_the_blocked_move(release):
    """After the watch and shadow tests: the versions' verdicts and the ledger's rows, as the page renders them."""
    from airflow.api_fastapi.core_api import security
    from fastapi.testclient import TestClient

    from continuous_training.ui.app import create_app

    class Everyone:
        async def get_user_from_token(self, token: str):
            from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

            return SimpleAuthManagerUser(username="viewer", role="viewer")

        def is_authorized_dag(self, *, method, access_entity=None, details=None, user) -> bool:
            return method == "GET"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(security, "get_auth_manager", lambda: Everyone())
        page = TestClient(create_app()).get("/models", headers={"Authorization": "Bearer viewer"})
    assert page.status_code == 200, page.text[:500]
    html = page.text
    blocked = [e for e in entries() if e["kind"] == "blocked"]
    rolled_back = [e for e in entries() if e["kind"] == "auto_rollback"]
    assert blocked, "the shadow tests ran first"
    assert rolled_back, "the watch tests ran first"
    row = html.split(f'<tr id="v{blocked[0]["to_version"]}">', 1)[1].split("</tr>", 1)[0]
    assert "shadow failed" in row
    assert "the challenger failed on 100.00%" in row
    row = html.split(f'<tr id="v{rolled_back[0]["from_version"]}">', 1)[1].split("</tr>", 1)[0]
    assert "watch breached" in row
    assert "no finite score" in row
    assert 'class="ledger-blocked"' in html
    assert 'class="ledger-auto_rollback"' in html
