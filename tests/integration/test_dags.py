"""Each DAG run with ``dag.test()`` against a real MLflow server, the real endpoint and the SMTP sink.

Together they are one pass of the loop (ingest -> quarantine -> train -> no second version -> gate ->
monitor -> retrain trigger) and share one lake, registry and mailbox, but they pass in any order: what a
test needs from an earlier step of the loop it requests from a module fixture that takes that step once,
whichever test asks first (``first_day_ingested`` -> ``good_days_ingested`` -> ``first_champion``), and
returns what happened. A test that changes what another one asserts on works on its own input: the
clearing test publishes its new day in a copy of the lake, the task-failure test breaks a day of its own.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from continuous_training import links
from continuous_training.config import load_contract, load_policy
from continuous_training.lake import Lake
from continuous_training.ops.mailsink import read_mail
from continuous_training.ops.simulate import (
    DRIFT_COLUMNS,
    SimulatorConfig,
    client_requests,
    land_day,
    send_traffic,
)
from continuous_training.settings import load_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START = date(2026, 10, 1)
DAYS = [START + timedelta(days=i) for i in range(8)]
BAD_DAY = DAYS[2]
DRIFT_DAY = DAYS[7]
#: A day no other test ingests: the task-failure test lands a broken file there.
BROKEN_DAY = DAYS[-1] + timedelta(days=1)
SIM = SimulatorConfig(
    seed=7, rows_per_day=2500, drift_from=DRIFT_DAY, bad_days={BAD_DAY.isoformat(): "missing_column"}
)


@pytest.fixture(scope="module")
def loop(mlflow_server, smtp_sink, airflow_db, endpoint):
    """The services, plus helpers to run a DAG and read what happened."""
    from airflow.dag_processing.dagbag import DagBag

    dags = DagBag(dag_folder=str(REPO / "dags")).dags
    return {"dags": dags, "mail": smtp_sink, "endpoint": endpoint, "lake": Lake.from_settings()}


def run_dag(loop, dag_id: str, conf: dict) -> tuple[str, dict[str, str]]:
    """Run a DAG with ``dag.test()``, on the DAG freshly parsed from its file.

    In ``dag.test()`` the tasks resolve the run's conf into the tasks' own ``Param`` objects (shared by
    ``copy.deepcopy`` too), so a value given to one run (``force``) would stay the default of every later
    run of the same DAG object. A new parse per run (milliseconds) gives each run only its own conf and
    the DAG file's defaults, whatever ran before.
    """
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=loop["dags"][dag_id].fileloc).dags[dag_id]
    dag_run = dag.test(run_conf=conf)
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    return str(getattr(dag_run.state, "value", dag_run.state)), states | {"__run_id__": dag_run.run_id}


def wait_until_logged(rows: int, since: datetime, timeout: float = 60.0) -> None:
    """The endpoint's workers flush their prediction logs every second here; wait for all rows."""
    from continuous_training.predlog import read_predictions

    deadline = time.monotonic() + timeout
    while len(read_predictions(Lake.from_settings(), since, datetime.now(UTC))) < rows:
        assert time.monotonic() < deadline, f"fewer than {rows} rows logged after {timeout:.0f}s"
        time.sleep(0.5)


def mails(loop, subject_part: str):
    return [m for m in read_mail(loop["mail"]) if subject_part in m["Subject"]]


def body(message) -> str:
    part = message.get_body(preferencelist=("html", "plain"))
    return part.get_content()


def client():
    import mlflow

    return mlflow.MlflowClient(load_settings().mlflow_tracking_uri)


def versions():
    name = load_policy().model.name
    try:
        return client().search_model_versions(f"name='{name}'")
    except Exception:  # the registered model does not exist yet
        return []


def _read_manifest(loop, day) -> dict:
    return yaml.safe_load((loop["lake"].validated(day) / "_manifest.json").read_text())


@pytest.fixture(scope="module")
def first_day_ingested(loop):
    """The loop's first step: ``DAYS[0]`` landed and ingested by the DAG, then ingested again.

    Returns the runs' states, the first run's tasks, both manifests, and the names in ``validated/`` right after the re-run.
    This is the only ingestion of ``DAYS[0]`` and every fixture that publishes another day depends on
    it, so that listing is the one of a lake where only this day was published, whatever the order.
    """
    day = DAYS[0]
    land_day(loop["lake"], day, SIM)
    state, tasks = run_dag(loop, "ingest", {"day": day.isoformat()})
    manifest = _read_manifest(loop, day)
    rerun_state, _ = run_dag(loop, "ingest", {"day": day.isoformat()})
    return {
        "day": day,
        "state": state,
        "tasks": tasks,
        "manifest": manifest,
        "rerun_state": rerun_state,
        "rerun_manifest": _read_manifest(loop, day),
        "validated_after_rerun": [p.name for p in loop["lake"].validated(day).parent.iterdir()],
    }


def test_ingest_publishes_a_good_day_and_rerun_is_identical(first_day_ingested):
    ingested = first_day_ingested
    day = ingested["day"]
    state, tasks = ingested["state"], ingested["tasks"]
    assert state == "success"
    assert tasks["publish"] == "success"
    assert tasks["quarantine"] == "skipped"
    manifest = ingested["manifest"]
    assert manifest["rows"] > 0

    state = ingested["rerun_state"]
    assert state == "success"
    again = ingested["rerun_manifest"]
    assert again["sha256"] == manifest["sha256"]
    assert ingested["validated_after_rerun"] == [f"dt={day}"]


def test_published_day_emits_the_asset_event(loop, first_day_ingested):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "validated_applications")
        ).all()
        extras = [e.extra for e in events]
    assert extras
    assert {e["day"] for e in extras} == {DAYS[0].isoformat()}


def test_bad_batch_is_quarantined_and_mailed_once(loop):
    land_day(loop["lake"], BAD_DAY, SIM)
    state, tasks = run_dag(loop, "ingest", {"day": BAD_DAY.isoformat()})
    assert state == "success"
    assert tasks["quarantine"] == "success"
    assert tasks["publish"] == "skipped"
    assert not loop["lake"].validated(BAD_DAY).exists()
    kept = list((loop["lake"].root / "quarantine" / f"dt={BAD_DAY}").iterdir())
    assert len(kept) == 1
    assert (kept[0] / "validation.json").exists()
    assert list(loop["lake"].landing(BAD_DAY).glob("*.csv")), "landing files are never deleted"

    alerts = mails(loop, "Bad data")
    assert len(alerts) == 1
    text = body(alerts[0])
    (dropped,) = [c for c in load_contract().column_names if c not in _landed_columns(loop, BAD_DAY)]
    assert dropped in text, "the mail names the missing column"
    page = links.quarantine_url(load_settings().public_url, BAD_DAY.isoformat(), kept[0].name)
    assert f'href="{page}"' in text, "the mail links the batch on the Quarantine page"
    assert str(kept[0]) not in text, "no server path as the batch's address"

    run_dag(loop, "ingest", {"day": BAD_DAY.isoformat()})
    assert len(mails(loop, "Bad data")) == 1, "the same bad batch is mailed once"


def _landed_columns(loop, day) -> list[str]:
    csv = next(loop["lake"].landing(day).glob("*.csv"))
    return csv.read_text().splitlines()[0].split(",")


def _ingest_directly(lake: Lake, day) -> None:
    """The ingest steps without the scheduler (the same functions the tasks call), to build history fast.

    ``lake`` must be the lake of the settings (``CT_LAKE``), where the steps work.
    """
    from continuous_training.adapter import steps

    land_day(lake, day, SIM)
    validation = steps.validate_partition(steps.stage_partition(day.isoformat()))
    assert validation["success"], validation["failed"]
    steps.publish_partition(validation)


@pytest.fixture(scope="module")
def good_days_ingested(loop, first_day_ingested):
    """The history the first champion learns from: the good days after ``DAYS[0]`` up to ``DAYS[6]``.

    Published after ``DAYS[0]`` (``first_day_ingested``, whose ``validated/`` listing must see that day
    alone), and with it they are the champion's training set. ``DRIFT_DAY`` (``DAYS[7]``) is never
    published in the shared lake, so that this training set stays the current one for every test.
    """
    days = [day for day in DAYS[1:7] if day != BAD_DAY]
    for day in days:
        _ingest_directly(loop["lake"], day)
    return days


@pytest.fixture(scope="module")
def first_champion(loop, good_days_ingested):
    """The first train DAG run, on that history (it deploys the first model version): its state and tasks."""
    state, tasks = run_dag(loop, "train", {"reason": "integration test"})
    return {"state": state, "tasks": tasks}


def test_train_deploys_the_first_champion(loop, first_champion):
    state, tasks = first_champion["state"], first_champion["tasks"]
    assert state == "success", tasks
    assert tasks["deploy"] == "success"
    assert tasks["notify_gate_blocked"] == "skipped"
    (version,) = versions()
    tags = version.tags
    assert tags["ct.dag_id"] == "train"
    assert tags["ct.dag_run_id"] == tasks["__run_id__"]
    assert len(tags["ct.training_set_sha256"]) == 64
    assert tags["ct.git_commit"]
    name = load_policy().model.name
    assert client().get_model_version_by_alias(name, "champion").version == version.version
    run = client().get_run(version.run_id)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} >= {"training", "holdout"}
    assert run.data.tags["ct.reason"] == "integration test"
    health = httpx.get(f"{loop['endpoint']}/health").json()
    assert health["model_version"] == version.version


def test_rerunning_train_creates_no_second_version(loop, first_champion):
    from continuous_training.adapter import steps

    state, tasks = run_dag(loop, "train", {"reason": "integration test"})
    assert state == "success"
    assert tasks["should_train"] == "success"
    assert tasks["train_challenger"] == "skipped", "same training set as the champion: nothing to learn"
    (version,) = versions()
    again = steps.register(version.run_id, {"dag_id": "train", "dag_run_id": "x", "git_commit": "y"})
    assert str(again["version"]) == version.version
    assert len(versions()) == 1


def test_clearing_a_train_run_after_new_data_retrains_nothing(loop, first_champion, tmp_path, monkeypatch):
    """Clearing the first train run's tasks, after another day was published, gives the same run and version.

    The new day is published in this test's own copy of the lake (the prediction log, which the endpoint
    keeps writing, left out), so that the shared lake keeps the champion's training set as the current
    one for the other tests.
    """
    from continuous_training.adapter import steps

    (version,) = versions()
    run_id = version.tags["ct.dag_run_id"]
    first = steps.build_training_set(None, run_id)
    own = Lake(tmp_path / "lake")
    shutil.copytree(loop["lake"].root, own.root, ignore=shutil.ignore_patterns("predictions"))
    monkeypatch.setenv("CT_LAKE", str(own.root))
    assert Lake.from_settings() == own
    _ingest_directly(own, DAYS[7])
    assert not loop["lake"].validated(DAYS[7]).exists(), "the shared lake did not get the new day"
    assert steps.build_training_set(None, "a new run")["sha256"] != first["sha256"]

    snapshot = steps.build_training_set(None, run_id)  # build_training_set cleared
    assert snapshot["sha256"] == version.tags["ct.training_set_sha256"]
    lineage = {"dag_id": "train", "dag_run_id": run_id, "git_commit": version.tags["ct.git_commit"]}
    trained = steps.train_challenger(snapshot, "integration test", lineage, {})  # train_challenger cleared
    assert trained["run_id"] == version.run_id
    registered = steps.register(trained["run_id"], lineage)  # register cleared
    assert str(registered["version"]) == version.version
    assert steps.deploy(registered, lineage)["changed"] is False  # deploy cleared
    assert len(versions()) == 1


def test_gate_blocks_a_challenger_below_the_floor_and_mails(loop, first_champion, tmp_path, monkeypatch):
    config = tmp_path / "config"
    shutil.copytree(REPO / "include" / "config", config)
    policy = yaml.safe_load((config / "policy.yaml").read_text())
    policy["gate"]["min_value"] = 0.999
    (config / "policy.yaml").write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("CT_CONFIG_DIR", str(config))
    champion_before = client().get_model_version_by_alias(load_policy().model.name, "champion").version

    state, tasks = run_dag(loop, "train", {"reason": "gate test", "force": True})
    assert state == "success", tasks
    assert tasks["notify_gate_blocked"] == "success"
    assert tasks["register"] == "skipped"
    assert len(versions()) == 1
    assert (
        client().get_model_version_by_alias(load_policy().model.name, "champion").version == champion_before
    )
    (alert,) = mails(loop, "Gate blocked")
    assert "below the floor" in body(alert)
    link = re.search(r"#/experiments/(\d+)/runs/([0-9a-f]{32})", body(alert))
    assert link, "the mail links the challenger's MLflow run page"
    assert client().get_run(link.group(2)).info.experiment_id == link.group(1)


def test_monitor_finds_drift_mails_and_triggers_train(loop, first_champion, tmp_path, monkeypatch):
    """Drift with no new data is on the record and mailed as not retraining; with a new validated day the
    same window triggers train, whose outcome is mailed and joins the record.

    The new day goes to this test's own copy of the lake, so that the shared lake keeps the champion's
    training set as the current one for the other tests.
    """
    from continuous_training.monitoring.retrain import read_decision

    window_start = datetime.now(UTC).isoformat()
    sent = send_traffic(loop["endpoint"], client_requests(DRIFT_DAY, SIM))
    assert sent["failed_requests"] == 0
    assert sent["rows"] >= load_policy().drift.min_rows
    wait_until_logged(sent["rows"], datetime.fromisoformat(window_start))
    window_end = datetime.now(UTC).isoformat()
    window = {"window_start": window_start, "window_end": window_end}

    # 1. Nothing validated since the champion was trained: a retraining would learn nothing, and says so.
    state, tasks = run_dag(loop, "monitor", window)
    assert state == "success", tasks
    assert tasks["alert_on_call"] == "success"
    assert tasks["retrain_due"] == "success"
    assert tasks["trigger_train"] == "skipped"
    held = read_decision(loop["lake"], tasks["__run_id__"])
    assert held["decision"] == "no_new_data"
    assert held["drifted"] is True
    assert held["train_run_id"] is None
    assert "no validated day arrived since champion v" in held["why"]
    # The served scores were judged against the champion's holdout scores, kept with the version.
    predicted = held["prediction_drift"]
    assert predicted["column"] == "score"
    assert predicted["reference_rows"] > 0
    assert predicted["current_rows"] == sent["rows"]
    assert predicted["score"] is not None
    assert sorted(held["drifted_columns"]) == sorted(DRIFT_COLUMNS)
    (alert,) = mails(loop, "Drift in")
    assert alert["Subject"].endswith(": not retraining (no_new_data)")
    assert "Not retraining: no new data to learn from" in body(alert)

    reports = list((loop["lake"].root / "reports" / "drift").glob("*/drift_report.html"))
    assert len(reports) == 1
    # The mail links the run's Drift page and its report at the public URL, never a file on the server.
    page = links.ui_url(load_settings().public_url, "drift", reports[0].parent.name)
    assert f'href="{page}"' in body(alert)
    assert f'href="{page}/report"' in body(alert)
    assert "file://" not in body(alert)
    # The subject names the three most drifted columns and counts the rest; the body lists all.
    assert sum(column in alert["Subject"] for column in DRIFT_COLUMNS) == 3
    assert f"and {len(DRIFT_COLUMNS) - 3} more" in alert["Subject"]
    for column in DRIFT_COLUMNS:
        assert column in body(alert)

    # 2. A new validated day (in this test's copy of the lake): the same window triggers train.
    own = Lake(tmp_path / "lake")
    shutil.copytree(loop["lake"].root, own.root, ignore=shutil.ignore_patterns(".*"))  # no temp files
    monkeypatch.setenv("CT_LAKE", str(own.root))
    _ingest_directly(own, DAYS[7])
    state, tasks = run_dag(loop, "monitor", window)
    assert state == "success", tasks
    assert tasks["trigger_train"] == "success"
    monitor_run = tasks["__run_id__"]
    decided = read_decision(own, monitor_run)
    assert decided["decision"] == "triggered"
    assert decided["train_run_id"] == f"drift__{monitor_run}"
    report = own.drift_report_dir(monitor_run) / "drift_report.html"
    alert = next(m for m in mails(loop, "Drift in") if m["Subject"].endswith(": retraining"))
    assert f"drift__{monitor_run}" in body(alert)

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        triggered = session.scalars(
            select(DagRun).where(DagRun.dag_id == "train", DagRun.run_id == f"drift__{monitor_run}")
        ).one()
        conf = dict(triggered.conf)
    assert conf["reason"].startswith("drift")
    assert sorted(conf["drifted_columns"]) == sorted(DRIFT_COLUMNS)
    assert conf["drift_report"] == str(report)
    assert conf["monitor_run_id"] == monitor_run

    # 3. Its outcome. Run here with the same conf under another run id (the monitor's own run would train
    # a new champion for every later test), the train run is held by the cooldown the monitor's trigger
    # started: not trained, and why, on the monitor run's record and in one mail.
    state, tasks = run_dag(loop, "train", conf)
    assert state == "success", tasks
    assert tasks["train_challenger"] == "skipped"
    assert tasks["report_outcome"] == "success"
    outcome = read_decision(own, monitor_run)["outcome"]
    assert outcome["outcome"] == "not_trained"
    assert "in cooldown until" in outcome["why"]
    assert outcome["train_run_id"] == tasks["__run_id__"]
    (closing,) = mails(loop, f"Retraining after monitor run {monitor_run}")
    assert closing["Subject"].endswith(": not trained")
    assert "in cooldown until" in body(closing)


def test_task_failure_mails_on_call_with_the_error(loop):
    """A file that is not CSV, landed next to the day's good export, fails the stage and mails on-call.

    The day is one of its own (no other test ingests it), so the broken file breaks nobody else's day.
    """
    day = BROKEN_DAY
    land_day(loop["lake"], day, SIM)
    folder = loop["lake"].landing(day)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "applications-broken.csv").write_bytes(b'"unterminated,quote\n\x00\x01')
    state, tasks = run_dag(loop, "ingest", {"day": day.isoformat()})
    assert state == "failed"
    assert tasks["stage_partition"] == "failed"
    (alert,) = mails(loop, "FAILED ingest.stage_partition")
    assert "applications-broken.csv" in body(alert)


def test_silence_mails_a_missing_day_and_a_silent_endpoint_once_each(
    loop, first_champion, tmp_path, monkeypatch
):
    """In a lake of its own whose newest batch is three days old and whose endpoint never logged a row:
    each missing day is mailed once, the silence once, and a second run mails nothing."""
    lake = Lake(tmp_path / "lake")
    monkeypatch.setenv("CT_LAKE", str(lake.root))
    config = tmp_path / "config"
    shutil.copytree(REPO / "include" / "config", config)
    policy = yaml.safe_load((config / "policy.yaml").read_text())
    policy["alerts"]["data_missing_after_hours"] = 0  # due at the day's end: independent of the hour
    (config / "policy.yaml").write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("CT_CONFIG_DIR", str(config))
    today = datetime.now(UTC).date()
    land_day(lake, today - timedelta(days=3), SIM)

    state, tasks = run_dag(loop, "silence", {})
    assert state == "success", tasks
    expected = [(today - timedelta(days=n)).isoformat() for n in (2, 1)]
    for day in expected:
        (alert,) = mails(loop, f"Data missing: no batch landed for {day}")
        assert str(lake.landing(day)) in body(alert)
        assert "trigger <code>ingest</code> with the <i>day</i> param" in body(alert)
    (silent,) = mails(loop, "No traffic: nothing served since never")
    assert f"{load_policy().model.name} v" in silent["Subject"]

    count = len(read_mail(loop["mail"]))
    state, tasks = run_dag(loop, "silence", {})
    assert state == "success", tasks
    assert len(read_mail(loop["mail"])) == count, "the same absences are not mailed twice"
