"""The plugin loads as Airflow loads it, and leaves the library importable for DAGs and tasks.

A fresh interpreter with the plugins folder configured (Airflow puts it on ``sys.path``): the plugin
imports without error, registers the pages' app under ``/ct`` and the navigation entry, imports nothing
heavy, and ``continuous_training`` is still the package (a plugin file named after it shadowed it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from airflow import plugins_manager
apps, _ = plugins_manager.get_fastapi_plugins()
views, _ = plugins_manager._get_ui_plugins()
import continuous_training, continuous_training.adapter.steps
print(json.dumps({
    "errors": plugins_manager.get_import_errors(),
    "apps": [{"prefix": a["url_prefix"], "name": a["name"]} for a in apps],
    "views": [{"name": v["name"], "href": v["href"], "destination": v.get("destination")} for v in views],
    "package": getattr(continuous_training, "__path__", None) is not None,
    "heavy": sorted(m for m in ("pandas", "sklearn", "mlflow", "evidently", "great_expectations", "plotly") if m in sys.modules),
}))
"""


def test_the_plugin_registers_the_pages_and_shadows_nothing(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
        "CT_HOME": str(tmp_path / "home"),
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert {"prefix": "/ct", "name": "Continuous training"} in found["apps"]
    assert {"name": "Continuous training", "href": "/ct/", "destination": "nav"} in found["views"]
    assert found["package"], "continuous_training resolved to a module of the plugins folder"
    # steps imports pandas lazily; the plugin itself must not pull in the heavy libraries.
    assert found["heavy"] == [], found["heavy"]
