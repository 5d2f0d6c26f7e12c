"""DAG integrity: imports, required settings, task graphs, params, and no heavy import at parse time."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = ("pandas", "numpy", "sklearn", "mlflow", "evidently", "great_expectations", "pyarrow", "scipy")

EXPECTED_GRAPH = {
    "ingest": {
        "stage_partition": {"validate_partition"},
        "validate_partition": {"route", "publish", "quarantine"},
        "route": {"publish", "quarantine"},
        "publish": set(),
        "quarantine": set(),
    },
    "train": {
        "build_training_set": {"should_train", "train_challenger"},
        "should_train": {"train_challenger"},
        "train_challenger": {"evaluate"},
        "evaluate": {"gate", "register", "notify_gate_blocked"},
        "gate": {"register", "notify_gate_blocked"},
        "register": {"shadow", "deploy"},
        "shadow": {"approve"},
        "approve": {"deploy"},
        "deploy": {"report_outcome"},
        "notify_gate_blocked": {"report_outcome"},
        "report_outcome": set(),
    },
    "monitor": {
        "collect_served": {"enough_rows", "compute_drift"},
        "enough_rows": {"compute_drift"},
        "compute_drift": {"decide", "alert_on_call"},
        "decide": {"alert_on_call", "retrain_due"},
        "alert_on_call": set(),
        "retrain_due": {"trigger_train"},
        "trigger_train": set(),
    },
    "rollback": {
        "choose_version": {"check_version"},
        "check_version": {"move_alias"},
        "move_alias": {"notify_on_call"},
        "notify_on_call": set(),
    },
    "watch": {"watch_champion": set()},
    "silence": {"check_landing": set(), "check_traffic": set()},
}


#: DAGs only a person triggers.
MANUAL_ONLY = {"rollback"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(EXPECTED_GRAPH)


def test_one_dag_per_file_named_after_it(dagbag):
    for dag_id in dagbag.dag_ids:
        assert Path(dagbag.dags[dag_id].fileloc).stem == dag_id


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_GRAPH))
def test_required_settings(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    # Every DAG is scheduled (time or Asset) but the rollback, which a person starts.
    assert (dag.schedule is None) == (dag_id in MANUAL_ONLY), dag.schedule
    assert dag.start_date is not None
    assert dag.start_date.utcoffset().total_seconds() == 0
    assert dag.catchup is False
    assert dag.max_active_runs >= 1
    assert "continuous-training" in dag.tags
    assert dag.doc_md
    assert dag.doc_md.lstrip().startswith("#")
    assert len(dag.doc_md) > 300
    for task in dag.tasks:
        assert task.owner == "ml-platform", task.task_id
        assert task.retries == int(os.environ.get("CT_TASK_RETRIES", "1")), task.task_id
        callbacks = task.on_failure_callback
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        assert any(type(cb).__name__ == "OnCallNotifier" for cb in callbacks), task.task_id


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_GRAPH))
def test_task_graph(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    graph = {t.task_id: set(t.downstream_task_ids) for t in dag.tasks}
    assert graph == EXPECTED_GRAPH[dag_id]
    assert dag.topological_sort()  # no cycle


def test_every_task_has_the_execution_timeout_of_the_table(dagbag):
    from airflow.providers.standard.operators.hitl import HITLOperator

    from continuous_training.adapter.defaults import TASK_TIMEOUTS

    declared = {
        f"{dag_id}.{task.task_id}": task
        for dag_id, dag in dagbag.dags.items()
        for task in dag.tasks
        # A person's answer is bounded by the request's response timeout (gate.approval_timeout_hours,
        # set when the request is made); Airflow refuses an execution_timeout beside it.
        if not isinstance(task, HITLOperator)
    }
    # One entry per task, no entry for a task that is gone.
    assert set(TASK_TIMEOUTS) == set(declared)
    for key, task in declared.items():
        assert task.execution_timeout is not None, f"{key} has no execution_timeout"
        assert task.execution_timeout == TASK_TIMEOUTS[key], key
        assert task.execution_timeout.total_seconds() >= 60, key


def test_one_training_at_a_time(dagbag):
    from continuous_training.adapter.defaults import TRAINING_POOL, TRAINING_QUEUE

    assert (TRAINING_POOL, TRAINING_QUEUE) == ("training", "training")
    train = dagbag.dags["train"].get_task("train_challenger")
    assert (train.pool, train.pool_slots, train.queue) == (TRAINING_POOL, 1, TRAINING_QUEUE)
    # Nothing else waits for the training slot or goes to the training workers.
    others = [t for dag in dagbag.dags.values() for t in dag.tasks if t is not train]
    assert all(t.pool != TRAINING_POOL and t.queue != TRAINING_QUEUE for t in others)


def test_task_logs_carry_no_skops_deprecation_noise():
    """Importing skops.io in a task process made Airflow's deprecated module aliases warn ~1,160 times
    (99% of a training task's log); the adapter silences exactly that, and nothing else."""
    code = """
import json, runpy, sys, warnings
warnings.simplefilter("default")
import airflow.sdk
runpy.run_path(sys.argv[1])  # what a task process loads before the task runs
caught = []
warnings.showwarning = lambda message, category, filename, *rest, **kw: caught.append((category.__name__, filename))
from continuous_training.adapter import steps  # noqa: F401  (each task imports it first)
import skops.io  # noqa: F401
from airflow.utils.deprecation_tools import DeprecatedImportWarning
warnings.warn("from our own code", DeprecatedImportWarning)
from airflow.utils.timezone import utcnow  # noqa: F401  (a deprecated import in our code still warns)
print(json.dumps(caught))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "dags" / "train.py")],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    caught = json.loads(out.stdout.strip().splitlines()[-1])
    assert not [c for c in caught if "skops" in c[1]], caught[:3]
    assert [c[0] for c in caught] == ["DeprecatedImportWarning", "DeprecatedImportWarning"], caught


def test_train_params_form(dagbag):
    params = dagbag.dags["train"].params
    assert set(params.keys()) == {
        "reason",
        "window_days",
        "force",
        "drift_report",
        "drifted_columns",
        "monitor_run_id",
    }
    assert params.get_param("force").schema["type"] == "boolean"
    assert params.get_param("window_days").schema["type"] == ["null", "integer"]
    assert params["reason"] == "manual"


@pytest.mark.parametrize("dag_id", ["ingest", "train", "monitor"])
def test_every_trigger_form_submits_with_its_defaults(dagbag, dag_id):
    """The UI's trigger form treats a field as required unless its type allows null, and an empty
    string or list as not filled in: such a Param must be nullable, or the Trigger button stays off."""
    params = dagbag.dags[dag_id].params
    for name in params:
        param = params.get_param(name)
        types = param.schema.get("type")
        types = types if isinstance(types, list) else [types]
        empty = param.value in (None, "", [], {})
        assert not empty or "null" in types, f"{dag_id}.{name}: empty default {param.value!r}, type {types}"
    params.validate()  # and the defaults are valid values


def test_the_rollback_form_asks_for_a_reason_and_defaults_to_the_previous_champion(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(dagbag.dags["rollback"].params)
    assert set(params.keys()) == {"version", "reason", "force"}
    assert params["version"] is None  # the previous champion, from the ledger
    assert "unless this is on" in params.get_param("force").description
    with pytest.raises(ParamValidationError):
        params.validate()  # the reason is required: the form's Trigger button stays off without it
    params["reason"] = "v7 scores every applicant 0"
    with pytest.raises(ParamValidationError):
        params["version"] = 0
    assert params.validate()["force"] is False


def test_train_param_validation_refuses_bad_values(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(dagbag.dags["train"].params)
    with pytest.raises(ParamValidationError):
        params["window_days"] = 1  # below the minimum of 2
    with pytest.raises(ParamValidationError):
        params["force"] = "yes"
    params["window_days"] = 14
    assert params.validate()["window_days"] == 14


def test_schedules(dagbag):
    assert "validated_applications" in str(dagbag.dags["train"].schedule)
    assert type(dagbag.dags["ingest"].timetable).__name__ == "CronDataIntervalTimetable"
    assert type(dagbag.dags["monitor"].timetable).__name__ == "CronTriggerTimetable"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_parsing_imports_nothing_heavy(dag_file):
    code = (
        "import sys, runpy; import airflow.sdk; runpy.run_path(sys.argv[1]); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(dag_file)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1:] in ([], [""]), f"{dag_file.name} imports {out.stdout.strip()}"


def test_a_promotion_schedules_the_watch(dagbag) -> None:
    deploy = dagbag.dags["train"].get_task("deploy")
    assert [asset.name for asset in deploy.outlets] == ["champion_promoted"]
    assert dagbag.dags["watch"].timetable.asset_condition.name == "champion_promoted"
