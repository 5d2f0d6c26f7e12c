"""The house's rules, checked: imports flow one way, the endpoint stands on the ground floor, only the
adapter and the alerts know Airflow, one owner for settings and one for the lake's paths.

The static checks read every module's imports, lazy ones inside functions included; the subprocess
checks look at what a fresh interpreter really loads.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "include" / "continuous_training"
GROUND = {
    "settings",
    "credentials",
    "config",
    "frames",
    "features",
    "lake",
    "lineage",
    "links",
    "metrics",
    "modelstore",
    "predlog",
    "provenance",
}
ROOMS = ("data", "model", "serving", "monitoring", "alerts", "ui", "adapter", "ops")
#: Which rooms each room may import (besides itself). The ground floor imports only the ground floor.
ALLOWED = {
    "ground": {"ground"},
    "data": {"ground"},
    "model": {"ground", "data"},
    # The endpoint mails on-call when it refuses a model (alerts' Airflow-free mailer and ledger).
    "serving": {"ground", "alerts"},
    "monitoring": {"ground"},
    "alerts": {"ground"},
    # The pages of the Airflow plugin read what the stages wrote (they never run a stage).
    "ui": {"ground", "data", "model", "monitoring"},
    "adapter": {"ground", "data", "model", "monitoring", "alerts"},
    "ops": {"ground", "data", "model", "serving", "monitoring"},
}
#: The rooms whose modules may import Airflow.
KNOW_AIRFLOW = {"adapter", "alerts", "ui"}
STAGES = ("data", "model", "monitoring")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return parts[1] if parts[1] in ROOMS else "ground"


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement of the file names (top-level, lazy and type-only alike)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from continuous_training.model import registry` imports a module of the model room.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_every_module_belongs_to_a_known_room() -> None:
    ground = {m.split(".")[1] for m in MODULES if _room(m) == "ground"}
    assert ground == GROUND
    assert {_room(m) for m in MODULES} == {"package", "ground", *ROOMS}
    assert (PACKAGE / "__init__.py").read_text() == "", "the package's __init__ stays empty (DAG parse cost)"


@pytest.mark.parametrize("module", sorted(MODULES), ids=sorted(MODULES))
def test_imports_flow_one_way(module: str) -> None:
    room = _room(module)
    allowed = ALLOWED.get(room, set()) | {room}
    wrong = []
    for line, name in _imports(MODULES[module]):
        if not name.startswith("continuous_training.") or name not in MODULES:
            continue
        target = _room(name)
        if target != "package" and target not in allowed:
            wrong.append(f"{MODULES[module].name}:{line} imports {name} ({target})")
    assert not wrong, f"{module} ({room}) may import only {sorted(allowed)}: {wrong}"


@pytest.mark.parametrize("module", sorted(MODULES), ids=sorted(MODULES))
def test_only_the_adapter_and_the_alerts_import_airflow(module: str) -> None:
    if _room(module) in KNOW_AIRFLOW:
        return
    airflow = [
        f"line {line}: {name}" for line, name in _imports(MODULES[module]) if name.split(".")[0] == "airflow"
    ]
    assert not airflow, f"{module} imports Airflow: {airflow}"


def test_dag_files_import_only_the_adapter() -> None:
    for path in sorted((REPO / "dags").glob("*.py")):
        ours = [name for _, name in _imports(path) if name.startswith("continuous_training")]
        assert ours, path
        assert all(name.startswith("continuous_training.adapter") for name in ours), (path.name, ours)


def _reads_ct_variable(node: ast.AST) -> str | None:
    """The ``CT_*`` name an ``os.environ[...]``, ``os.environ.get(...)`` or ``os.getenv(...)`` reads."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        target, key = node.value, node.slice
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        target, key = node.func, node.args[0]
        if node.func.attr == "getenv":
            target = ast.Attribute(value=node.func.value, attr="environ")
        elif node.func.attr not in ("get", "pop", "setdefault"):
            return None
        else:
            target = node.func.value
    else:
        return None
    is_environ = isinstance(target, ast.Attribute) and target.attr == "environ"
    if is_environ and isinstance(key, ast.Constant) and str(key.value).startswith("CT_"):
        return str(key.value)
    return None


def test_only_settings_reads_ct_variables() -> None:
    readers = []
    for module, path in MODULES.items():
        if module == "continuous_training.settings":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = _reads_ct_variable(node)
            if name:
                readers.append(f"{path.relative_to(REPO)}:{node.lineno} reads {name}")
    assert not readers


def test_the_reader_check_sees_a_read() -> None:
    # The check above must be able to fail: each form of a read is recognised.
    for code in ('os.environ["CT_X"]', 'os.environ.get("CT_X")', 'os.getenv("CT_X", "1")'):
        assert _reads_ct_variable(ast.parse(code, mode="eval").body) == "CT_X"
    assert _reads_ct_variable(ast.parse('env["CT_X"]', mode="eval").body) is None


def test_only_the_lake_joins_lake_paths() -> None:
    joins = []
    for module, path in MODULES.items():
        if module == "continuous_training.lake":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.BinOp)
                and isinstance(node.op, ast.Div)
                and isinstance(node.left, ast.Attribute)
                and node.left.attr == "root"
            ):
                joins.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not joins, f"lake paths built outside Lake: {joins}"


def _loaded_modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's pipeline, fitted on a few rows and saved as an MLflow model folder."""
    import mlflow.sklearn
    import numpy as np
    import pandas as pd

    from continuous_training.config import load_contract
    from continuous_training.model.train import SKOPS_TRUSTED_TYPES, build_pipeline

    contract = load_contract()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            c.name: rng.uniform(c.min, c.max, 60)
            if c.is_numeric
            else rng.choice(np.array(c.values, dtype=object), 60)
            for c in contract.features
        }
    )
    pipeline = build_pipeline(contract, {"max_iter": 3}).fit(frame, rng.integers(0, 2, 60))
    path = tmp_path_factory.mktemp("model") / "model"
    mlflow.sklearn.save_model(
        pipeline, str(path), skops_trusted_types=SKOPS_TRUSTED_TYPES, pip_requirements=["scikit-learn"]
    )
    return path


def test_the_endpoint_stands_on_the_ground_floor(saved_model: Path) -> None:
    loaded = _loaded_modules(
        "from continuous_training.config import load_contract\n"
        "from continuous_training.modelstore import load_model\n"
        "from continuous_training.serving.app import create_app\n"
        "from continuous_training.serving.scorer import compile_scorer\n"
        "app = create_app()\n"
        f"scorer, kind = compile_scorer(load_model({str(saved_model)!r}), load_contract())\n"
        "assert kind == 'compiled', kind\n"
    )
    ours = {m for m in loaded if m.startswith("continuous_training.")}
    assert {_room(m) for m in ours} == {"ground", "serving"}, sorted(ours)
    for heavy in ("great_expectations", "evidently", "airflow", "mlflow.sklearn.utils"):
        assert heavy not in loaded, f"the endpoint loaded {heavy}"
    # The check can fail: the model room does load what the endpoint must not.
    assert "continuous_training.data.partitions" in _loaded_modules("import continuous_training.model.train")


def test_no_stage_or_floor_module_loads_airflow() -> None:
    modules = [m for m in MODULES if _room(m) in {"ground", "serving", "ops", *STAGES}]
    loaded = _loaded_modules("\n".join(f"import {m}" for m in modules))
    assert set(modules) <= loaded
    assert not {m for m in loaded if m.split(".")[0] == "airflow"}
    # The check can fail: the adapter does load Airflow.
    assert "airflow" in _loaded_modules("import continuous_training.adapter.steps")
