"""Where things are seen: the URLs of the Airflow UI, the MLflow UI and this project's UI pages.

One place builds every link a page or a mail carries, so that they agree and are quoted once. The
bases come from Settings (``airflow_url``, ``mlflow_tracking_uri``); a path segment taken from data
(a run id holds ``:`` and ``+``) is percent-quoted.
"""

from __future__ import annotations

from urllib.parse import quote

#: Where the Airflow plugin mounts the project's pages (``plugins/continuous_training_plugin.py``).
UI_PREFIX = "/ct"


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def airflow_run_url(airflow_url: str, dag_id: str, run_id: str) -> str:
    """The Airflow UI page of a DAG run."""
    return f"{airflow_url.rstrip('/')}/dags/{_segment(dag_id)}/runs/{_segment(run_id)}"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{_segment(experiment_id)}/runs/{_segment(run_id)}"


def ui_url(base_url: str, *segments: str) -> str:
    """A page of the project's UI under ``base_url`` (the Airflow UI): ``ui_url(b, "drift", key)``."""
    path = "/".join(_segment(s) for s in segments)
    return f"{base_url.rstrip('/')}{UI_PREFIX}/{path}"


def quarantine_url(base_url: str, day: str, batch: str) -> str:
    """A quarantined batch on the Quarantine page (its anchor is ``<day>-<batch>``)."""
    return f"{ui_url(base_url, 'quarantine')}#{_segment(day)}-{_segment(batch)}"
