"""The Airflow plugin of this project: it only registers the pages (``continuous_training.ui``).

Airflow puts the plugins folder on ``sys.path``, so this file must not be named like a package it
imports (``continuous_training.py`` would shadow the library for every DAG and task).

``fastapi_apps`` mounts the pages' app under ``/ct`` in Airflow's API server; ``external_views`` puts
"Continuous training" in the UI's navigation, opening ``/ct/`` inside the UI. The app authenticates
every request itself with Airflow's session and permissions: Airflow does not do it for plugin apps.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from continuous_training.links import UI_PREFIX
from continuous_training.ui.app import create_app


class ContinuousTrainingPlugin(AirflowPlugin):
    name = "continuous_training"
    fastapi_apps = [{"app": create_app(), "url_prefix": UI_PREFIX, "name": "Continuous training"}]
    external_views = [
        {
            "name": "Continuous training",
            "href": f"{UI_PREFIX}/",
            "destination": "nav",
            "url_route": "continuous-training",
        }
    ]
