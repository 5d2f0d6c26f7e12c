"""``ct demo``: the whole loop on the embedded stack, driven through Airflow's REST API.

The scheduler runs every DAG (no ``dag.test()``): the demo only drops files, plays clients and triggers
runs the way a user would from the UI. Each phase records its completion under ``$CT_HOME/demo/`` and
every run has a fixed id, so running the demo again resumes or does nothing.

Timeline (12 simulated days from ``start``, a Monday by default):

* days 1-7, history: labelled batches land and are ingested (day 4 is a bad batch: quarantined, mailed);
  the ``train`` DAG, scheduled on the validated-data Asset, deploys the first champion.
* days 8-9, live: clients send each day's applications to the endpoint, then the labelled batch lands;
  a monitor run over this traffic finds no drift (the control).
* days 10-12, drift: the simulator shifts 4 input columns; the monitor finds them, mails on-call and
  triggers ``train`` with the report; the new champion is deployed and served.

The first champion is trained on at least ``training.min_partitions`` (5) days, so at most 6 newer days
follow it: fewer than ``training.refresh_after_new_partitions`` (7), so the only retraining after the
first champion is the one the monitor asks for.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from continuous_training.lake import write_json_atomic
from continuous_training.settings import Settings, load_settings

log = logging.getLogger(__name__)

HISTORY_DAYS = 7
LIVE_DAYS = 2
DRIFT_DAYS = 3


class DemoError(RuntimeError):
    """The loop did not do what the demo expects; the message says where to look."""


@dataclass(frozen=True)
class DemoPlan:
    start: date = date(2026, 11, 2)
    seed: int = 42
    bad_day_index: int = 4  # 1-based

    def day(self, i: int) -> date:
        return self.start + timedelta(days=i - 1)

    @property
    def drift_from(self) -> date:
        return self.day(HISTORY_DAYS + LIVE_DAYS + 1)

    @property
    def bad_day(self) -> date:
        return self.day(self.bad_day_index)


class DemoState:
    """Which phases are done (and the time windows they covered), persisted as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_json_atomic(self.path, self.data)  # read by `make bench` while the demo runs


def _say(msg: str) -> None:
    print(f"[demo {datetime.now():%H:%M:%S}] {msg}", flush=True)


def _transient(exc: BaseException) -> bool:
    """Whether an error of a polled service is worth polling through (it may answer next time).

    Connection errors and 5xx answers of Airflow (after the client's own retries), of MLflow (after
    MLflow's client retries; a server restarted by its supervisor refuses connections for a while) and
    of the endpoint. A 4xx or a bug is not transient.
    """
    import httpx

    from continuous_training.ops.airflow_client import AirflowAPIError

    if isinstance(exc, AirflowAPIError):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        return True
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return False
    if isinstance(exc, MlflowException):
        # Raised by the REST client once its retries are spent: a refused connection, or a 5xx.
        return exc.get_http_status_code() >= 500
    return False


def _wait(predicate: Callable[[], Any], what: str, timeout: float, every: float = 2.0) -> Any:
    """Poll ``predicate`` until it returns something truthy, riding through transient errors.

    A transient error (see :func:`_transient`) of one poll is logged and the next poll follows; the
    last one is raised with the timeout if nothing better came.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:
            if not _transient(exc):
                raise
            if last_error is None or str(exc) != str(last_error):
                log.warning("waiting for %s: %s: %s (polling on)", what, type(exc).__name__, exc)
            last_error = exc
            value = None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from last_error


def _retry(call: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 2.0) -> Any:
    """``call()``, repeated while it fails transiently, for at most ``timeout`` s."""
    return _wait(lambda: [call()], what, timeout, every)[0]  # a list: a falsy result ends the wait too


def _endpoint_version(settings: Settings) -> str | None:
    import httpx

    try:
        return httpx.get(f"{settings.endpoint_url}/health", timeout=5).json().get("model_version")
    except (httpx.HTTPError, ValueError):
        return None


def run_demo(settings: Settings | None = None, plan: DemoPlan | None = None) -> dict[str, Any]:
    """Bring the stack up and run the loop; return (and print) the summary."""
    from continuous_training.lake import Lake
    from continuous_training.model.registry import get_champion
    from continuous_training.monitoring.retrain import read_decision
    from continuous_training.ops.airflow_client import AirflowClient
    from continuous_training.ops.simulate import SimulatorConfig, client_requests, land_day, send_traffic
    from continuous_training.ops.stack import airflow_password, pipeline_client_env, stack_up

    settings = settings or load_settings()
    plan = plan or DemoPlan()
    t0 = time.monotonic()
    # The demo registers nothing itself, but reads the registry (the champion) as the pipeline would.
    os.environ.update(pipeline_client_env(settings))
    _say(f"bringing the stack up under {settings.home} (first start takes about a minute)")
    stack_up(settings)
    state = DemoState(settings.home / "demo" / "state.json")
    lake = Lake(settings.lake)
    sim = SimulatorConfig(
        seed=plan.seed, drift_from=plan.drift_from, bad_days={plan.bad_day.isoformat(): "out_of_range"}
    )
    af = AirflowClient(settings.airflow_url, "admin", airflow_password(settings))
    af.wait_for_dags({"ingest", "train", "monitor"})
    traffic: dict[str, Any] = state.get("traffic") or {"requests": 0, "rows": 0, "failed_requests": 0}

    def ingest(days: list[date]) -> None:
        for d in days:
            land_day(lake, d, sim)
            af.trigger("ingest", f"demo__ingest__{d}", {"day": d.isoformat()})
        for d in days:
            run = af.wait_for_run("ingest", f"demo__ingest__{d}")
            states = af.task_states("ingest", f"demo__ingest__{d}")
            verdict = (
                "published"
                if states.get("publish") == "success"
                else ("QUARANTINED" if states.get("quarantine") == "success" else run["state"])
            )
            _say(f"  ingest {d}: {verdict}")

    def settle_training() -> None:
        # Asset events reach the train DAG a moment after each ingest; wait until no run is pending.
        for _ in range(2):
            time.sleep(5)
            af.wait_until_idle("train")

    def serve(days: list[date]) -> None:
        for d in days:
            sent = send_traffic(settings.endpoint_url, client_requests(d, sim))
            for k in ("requests", "rows", "failed_requests"):
                traffic[k] += sent[k]
            _say(
                f"  clients sent {sent['rows']} applications of {d} ({sent['failed_requests']} failed requests)"
            )
        state.set("traffic", traffic)

    def monitor(key: str, window_start: str) -> dict[str, Any]:
        time.sleep(6)  # the endpoint flushes its prediction log every 2 s
        window_end = datetime.now(UTC).isoformat()
        run_id = f"demo__monitor__{key}"
        af.trigger("monitor", run_id, {"window_start": window_start, "window_end": window_end})
        run = af.wait_for_run("monitor", run_id)
        states = af.task_states("monitor", run_id)
        decision = read_decision(lake, run_id) or {}
        _say(
            f"  monitor ({key}): {run['state']}, drift found: {states.get('alert_on_call') == 'success'}, "
            f"decision: {decision.get('decision', 'none')}"
            + (f" ({decision['why']})" if decision.get("why") else "")
        )
        return states

    history = [plan.day(i) for i in range(1, HISTORY_DAYS + 1)]
    live = [plan.day(i) for i in range(HISTORY_DAYS + 1, HISTORY_DAYS + LIVE_DAYS + 1)]
    drifted = [
        plan.day(i) for i in range(HISTORY_DAYS + LIVE_DAYS + 1, HISTORY_DAYS + LIVE_DAYS + DRIFT_DAYS + 1)
    ]

    if not state.get("history_done"):
        _say(f"phase 1: {len(history)} days of history land and are ingested (bad batch on {plan.bad_day})")
        ingest(history)
        _say(
            "  waiting for the train DAG (scheduled on the validated-data Asset) to deploy the first champion"
        )
        settle_training()
        champion = _wait(get_champion, "a first champion", 600)
        _wait(
            lambda: _endpoint_version(settings) == str(champion["version"]), "the endpoint to serve it", 120
        )
        state.set("history_done", True)
        state.set("first_champion", str(champion["version"]))
    first = state.get("first_champion")
    _say(f"champion v{first} is serving at {settings.endpoint_url}")

    def live_phase(key: str, days: list[date]) -> dict[str, str | None]:
        """Clients call the endpoint, the labelled batches land, the monitor judges the traffic."""
        window_start = state.get(f"{key}_window_start") or datetime.now(UTC).isoformat()
        state.set(f"{key}_window_start", window_start)
        if not state.get(f"{key}_served"):  # a resumed demo does not send the same traffic twice
            serve(days)
            state.set(f"{key}_served", True)
        if not state.get(f"{key}_landed_at"):  # when the phase's first batch lands (make bench reads it)
            state.set(f"{key}_landed_at", datetime.now(UTC).isoformat())
        ingest(days)
        settle_training()
        return monitor(key, window_start)

    if not state.get("live_done"):
        _say(f"phase 2: {len(live)} live days without drift: clients call the endpoint, labels land")
        live_phase("control", live)
        state.set("live_done", True)

    if not state.get("drift_done"):
        _say(f"phase 3: covariate shift from {plan.drift_from} on {len(drifted)} days")
        states = live_phase("drift", drifted)
        if states.get("trigger_train") != "success":
            raise DemoError(
                f"the monitor did not trigger train (task states {states}); its logs are in "
                f"{settings.airflow_url}/dags/monitor/runs/demo__monitor__drift"
            )
        _say("  the monitor triggered train; waiting for the retrained champion")
        retrain = af.wait_for_run("train", "drift__demo__monitor__drift", timeout=900)
        _say(f"  drift-triggered train run: {retrain['state']}")
        state.set("drift_done", True)

    champion = _retry(get_champion, "the champion")
    summary = summarize(settings, state, first, champion, traffic)
    summary["deployment"] = settings.deployment
    summary["training_workers"] = training_workers(af)
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    # For scripts and tests: the summary without the logins.
    write_json_atomic(
        settings.demo_dir / "summary.json",
        {k: v for k, v in summary.items() if not k.endswith("_login")},
    )
    print_summary(summary)
    af.close()
    return summary


def summarize(
    settings: Settings, state: DemoState, first: str | None, champion: dict | None, traffic: dict[str, Any]
) -> dict[str, Any]:
    from continuous_training.credentials import MLFLOW_ADMIN, mlflow_credentials
    from continuous_training.ops.mailsink import read_mail
    from continuous_training.ops.stack import airflow_password

    reports = sorted((settings.lake / "reports" / "drift").glob("*/drift_report.html"))
    return {
        "champion_before": first,
        "champion_after": str(champion["version"]) if champion else None,
        # The endpoint may be restarting (its supervisor): a few seconds of patience, then None.
        "endpoint_serves": _wait_or_none(lambda: _endpoint_version(settings), 30.0),
        "drift_reports": [str(p) for p in reports],
        "mails": [f"{m['Date']}  {m['Subject']}" for m in read_mail(settings.mail_dir)],
        "traffic": traffic,
        "airflow_ui": settings.airflow_url,
        "airflow_login": f"admin / {airflow_password(settings)}",
        "mlflow_ui": settings.mlflow_tracking_uri,
        "mlflow_login": f"{MLFLOW_ADMIN} / {mlflow_credentials(settings)[MLFLOW_ADMIN]}",
        "endpoint": settings.endpoint_url,
        "mail_dir": str(settings.mail_dir),
    }


def training_workers(af: Any) -> dict[str, str]:
    """``train`` run id -> the worker (task instance host name) that ran its ``train_challenger``."""
    return {
        ti["dag_run_id"]: ti["hostname"]
        for ti in af.task_instances("train")
        if ti["task_id"] == "train_challenger" and ti["state"] == "success" and ti["hostname"]
    }


def _wait_or_none(predicate: Callable[[], Any], timeout: float) -> Any:
    try:
        return _wait(predicate, "an answer", timeout, every=1.0)
    except TimeoutError:
        return None


def print_summary(s: dict[str, Any]) -> None:
    print("\n=== continuous-training demo: summary ===")
    print(f"champion before drift : v{s['champion_before']}")
    print(f"champion after retrain: v{s['champion_after']} (endpoint serves v{s['endpoint_serves']})")
    print(
        f"client traffic        : {s['traffic']['rows']} rows in {s['traffic']['requests']} requests, "
        f"{s['traffic']['failed_requests']} failed"
    )
    print("drift reports         :")
    for path in s["drift_reports"]:
        print(f"  {path}")
    print(f"mails received ({len(s['mails'])}) in {s['mail_dir']}:")
    for line in s["mails"]:
        print(f"  {line}")
    print(f"Airflow UI            : {s['airflow_ui']}  (login {s['airflow_login']})")
    print(f"MLflow UI             : {s['mlflow_ui']}  (login {s['mlflow_login']})")
    print(f"prediction endpoint   : {s['endpoint']}/predict  (health: {s['endpoint']}/health)")
    if s.get("training_workers"):
        print(f"trainings ({s.get('deployment', 'embedded')} stack), run -> worker:")
        for run_id, host in sorted(s["training_workers"].items()):
            print(f"  {run_id}  ->  {host}")
    if "elapsed_s" in s:
        print(f"took {s['elapsed_s']:.0f} s. The stack keeps running: `make stack-down` stops it.")
