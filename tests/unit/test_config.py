"""Loading of ``dataset.yaml`` and ``policy.yaml`` and the messages of every :class:`ConfigError`.

The person reading these errors is adapting the files to their own data, so each case checks that the
message names the file (or the ``where`` label), the column or field, and what was expected. Everything
is pure file I/O under ``tmp_path``; no service is started.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from continuous_training.config import (
    COLUMN_TYPES,
    ROLES,
    AlertPolicy,
    ConfigError,
    DatasetContract,
    DriftPolicy,
    GatePolicy,
    ModelPolicy,
    Policy,
    TrainingPolicy,
    _build,
    load_contract,
    load_policy,
    parse_contract,
)

SHIPPED_CONFIG_DIR = Path(__file__).resolve().parents[2] / "include" / "config"
WHERE = "conf/dataset.yaml"
TYPES_TEXT = str(list(COLUMN_TYPES))
ROLES_TEXT = str(list(ROLES))


@pytest.fixture(autouse=True)
def _no_policy_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without the override variables; the override tests set them explicitly."""
    monkeypatch.delenv("CT_MODEL_NAME", raising=False)
    monkeypatch.delenv("CT_ALERT_TO", raising=False)


def assert_mentions(excinfo: pytest.ExceptionInfo[ConfigError], fragments: list[str]) -> None:
    message = str(excinfo.value)
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"message {message!r} lacks {missing!r}"


# --------------------------------------------------------------------------------------------------
# The shipped configuration
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_dataset_yaml() -> dict[str, Any]:
    return yaml.safe_load((SHIPPED_CONFIG_DIR / "dataset.yaml").read_text())


@pytest.fixture(scope="module")
def shipped_policy_yaml() -> dict[str, Any]:
    return yaml.safe_load((SHIPPED_CONFIG_DIR / "policy.yaml").read_text())


def test_shipped_contract_loads_in_yaml_order(shipped_dataset_yaml: dict[str, Any]) -> None:
    contract = load_contract(SHIPPED_CONFIG_DIR)

    assert isinstance(contract, DatasetContract)
    assert contract.name == shipped_dataset_yaml["name"]
    assert contract.min_rows == shipped_dataset_yaml["min_rows"]
    raw_columns = shipped_dataset_yaml["columns"]
    assert contract.column_names == [c["name"] for c in raw_columns]
    assert contract.feature_names == [c["name"] for c in raw_columns if c["role"] == "feature"]
    assert len(set(contract.column_names)) == len(contract.column_names)


@pytest.mark.parametrize("role", ["key", "timestamp", "target"])
def test_shipped_contract_has_exactly_one_column_per_singular_role(role: str) -> None:
    contract = load_contract(SHIPPED_CONFIG_DIR)

    matching = [c.name for c in contract.columns if c.role == role]
    assert len(matching) == 1
    assert getattr(contract, role) == matching[0]


def test_shipped_contract_column_facts() -> None:
    contract = load_contract(SHIPPED_CONFIG_DIR)

    assert contract.key == "application_id"
    assert contract.timestamp == "applied_at"
    assert contract.target == "defaulted"
    assert contract.categorical_features, "the shipped contract has categorical features"
    for name in contract.categorical_features:
        values = contract.column(name).values
        assert isinstance(values, tuple)
        assert values
        assert len(set(values)) == len(values)
    for name in contract.numeric_features:
        column = contract.column(name)
        assert column.min is not None
        assert column.max is not None
        assert column.min < column.max
    assert set(contract.numeric_features) | set(contract.categorical_features) == set(contract.feature_names)
    assert contract.column(contract.target).values == (0, 1)


def test_shipped_contract_is_the_default_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_CONFIG_DIR", str(SHIPPED_CONFIG_DIR))

    assert load_contract() == load_contract(SHIPPED_CONFIG_DIR)


def test_shipped_policy_loads_with_yaml_values(shipped_policy_yaml: dict[str, Any]) -> None:
    policy = load_policy(SHIPPED_CONFIG_DIR)

    assert isinstance(policy, Policy)
    assert policy.model.name == shipped_policy_yaml["model"]["name"]
    assert policy.model.params == shipped_policy_yaml["model"]["params"]
    assert policy.alerts.on_call == tuple(shipped_policy_yaml["alerts"]["on_call"])
    assert policy.alerts.from_email == shipped_policy_yaml["alerts"]["from_email"]
    for section in ("training", "gate", "drift"):
        assert vars(getattr(policy, section)) == shipped_policy_yaml[section], section
    assert policy.training.holdout_days < policy.training.window_days


# --------------------------------------------------------------------------------------------------
# parse_contract: every column check
# --------------------------------------------------------------------------------------------------


def _base_columns() -> list[dict[str, Any]]:
    return [
        {"name": "id", "type": "string", "role": "key"},
        {"name": "ts", "type": "timestamp", "role": "timestamp"},
        {"name": "x", "type": "float", "role": "feature", "min": 0.0, "max": 1.0},
        {"name": "colour", "type": "category", "role": "feature", "values": ["red", "blue"]},
        {"name": "y", "type": "integer", "role": "target", "values": [0, 1]},
    ]


def _contract(columns: list[Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"name": "tiny", "columns": _base_columns() if columns is None else columns, "min_rows": 3, **top}


def _replace(name: str, **changes: Any) -> list[dict[str, Any]]:
    """The base columns with column ``name`` changed (a value of ``None`` removes the field)."""
    columns = _base_columns()
    for column in columns:
        if column["name"] == name:
            column.update(changes)
            for key in [k for k, v in changes.items() if v is None]:
                del column[key]
    return columns


def _without(*names: str) -> list[dict[str, Any]]:
    return [c for c in _base_columns() if c["name"] not in names]


def _plus(*extra: Any) -> list[Any]:
    return [*_base_columns(), *extra]


CONTRACT_ERROR_CASES = [
    pytest.param(
        {"name": "tiny"},
        [WHERE, "`columns`", "must be a non-empty list of column specs"],
        id="columns-missing",
    ),
    pytest.param(_contract([]), [WHERE, "`columns`", "must be a non-empty list"], id="columns-empty"),
    pytest.param(
        _contract({"id": {"type": "string"}}),
        [WHERE, "`columns`", "must be a non-empty list"],
        id="columns-mapping",
    ),
    pytest.param(
        _contract(_plus("extra")),
        [f"{WHERE}: columns[5]", "expected a mapping with at least `name`, `type` and `role`"],
        id="column-not-a-mapping",
    ),
    pytest.param(
        _contract([_base_columns()[0], {"type": "float", "role": "feature"}]),
        [f"{WHERE}: columns[1]", "expected a mapping with at least `name`"],
        id="column-without-name",
    ),
    pytest.param(
        _contract(_replace("x", unit="cm", scale=2)),
        [f"{WHERE}: column 'x'", "unknown field(s) ['scale', 'unit']"],
        id="column-unknown-field",
    ),
    pytest.param(
        _contract(_replace("x", type="double")),
        [f"{WHERE}: column 'x'", "type 'double'", f"is not one of {TYPES_TEXT}"],
        id="column-bad-type",
    ),
    pytest.param(
        _contract(_replace("x", type=None)),
        [f"{WHERE}: column 'x'", "type None", f"is not one of {TYPES_TEXT}"],
        id="column-missing-type",
    ),
    pytest.param(
        _contract(_replace("y", role="label")),
        [f"{WHERE}: column 'y'", "role 'label'", f"is not one of {ROLES_TEXT}"],
        id="column-bad-role",
    ),
    pytest.param(
        _contract(_replace("y", role=None)),
        [f"{WHERE}: column 'y'", "role None", f"is not one of {ROLES_TEXT}"],
        id="column-missing-role",
    ),
    pytest.param(
        _contract(_plus({"name": "x", "type": "integer", "role": "feature"})),
        [f"{WHERE}: column 'x'", "declared twice"],
        id="column-declared-twice",
    ),
    pytest.param(
        _contract(_replace("colour", values=None)),
        [f"{WHERE}: column 'colour'", "a category column needs its list of `values`"],
        id="category-without-values",
    ),
    pytest.param(
        _contract(_replace("colour", values=[])),
        [f"{WHERE}: column 'colour'", "needs its list of `values`"],
        id="category-empty-values",
    ),
    pytest.param(
        _contract(_plus({"name": "id2", "type": "string", "role": "key"})),
        [WHERE, "expected exactly one column with role 'key', found 2"],
        id="two-keys",
    ),
    pytest.param(
        _contract(_without("ts")),
        [WHERE, "expected exactly one column with role 'timestamp', found 0"],
        id="no-timestamp",
    ),
    pytest.param(
        _contract(_without("y")),
        [WHERE, "expected exactly one column with role 'target', found 0"],
        id="no-target",
    ),
    pytest.param(
        _contract(_without("x", "colour")), [WHERE, "no column has role 'feature'"], id="no-feature"
    ),
    pytest.param(
        _contract(owner="me", version=2),
        [WHERE, "unknown top-level field(s) ['owner', 'version']"],
        id="unknown-top-level-field",
    ),
]


@pytest.mark.parametrize(("data", "fragments"), CONTRACT_ERROR_CASES)
def test_parse_contract_errors_name_file_column_and_expectation(
    data: dict[str, Any], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_contract(copy.deepcopy(data), where=WHERE)
    assert_mentions(excinfo, fragments)


def test_parse_contract_default_where_label_is_dataset_yaml() -> None:
    with pytest.raises(ConfigError, match=re.escape("dataset.yaml: `columns` must be a non-empty list")):
        parse_contract({})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_parse_contract_valid_columns() -> None:
    contract = parse_contract(_contract(_replace("x", nullable=True)), where=WHERE)

    assert contract.name == "tiny"
    assert contract.min_rows == 3
    assert contract.column_names == ["id", "ts", "x", "colour", "y"]
    assert contract.feature_names == ["x", "colour"]
    assert contract.numeric_features == ["x"]
    assert contract.categorical_features == ["colour"]
    assert contract.column("colour").values == ("red", "blue")
    assert contract.column("x").values is None
    assert contract.column("x").nullable is True
    assert contract.column("id").nullable is False
    with pytest.raises(KeyError):
        contract.column("nope")


def test_parse_contract_defaults_name_and_min_rows() -> None:
    contract = parse_contract({"columns": _base_columns()})

    assert contract.name == "dataset"
    assert contract.min_rows == 1


# --------------------------------------------------------------------------------------------------
# _read_yaml through load_contract / load_policy
# --------------------------------------------------------------------------------------------------

LOADERS = [
    pytest.param(load_contract, "dataset.yaml", id="dataset"),
    pytest.param(load_policy, "policy.yaml", id="policy"),
]


@pytest.mark.parametrize(("loader", "filename"), LOADERS)
def test_missing_file_points_at_ct_config_dir(
    tmp_path: Path, loader: Callable[[Path], object], filename: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        loader(tmp_path)
    assert_mentions(excinfo, [str(tmp_path / filename), "file not found", "set CT_CONFIG_DIR"])


@pytest.mark.parametrize(("loader", "filename"), LOADERS)
@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param("columns: [a, b\n", ["not valid YAML"], id="unclosed-flow"),
        pytest.param("a: 1\n  b: 2\n", ["not valid YAML"], id="bad-indentation"),
        pytest.param("- a\n- b\n", ["expected a mapping at the top level, got list"], id="top-level-list"),
        pytest.param("just text\n", ["expected a mapping at the top level, got str"], id="top-level-scalar"),
        pytest.param("", ["expected a mapping at the top level, got NoneType"], id="empty-file"),
    ],
)
def test_unreadable_yaml_names_the_file(
    tmp_path: Path,
    loader: Callable[[Path], object],
    filename: str,
    text: str,
    fragments: list[str],
) -> None:
    path = tmp_path / filename
    path.write_text(text)

    with pytest.raises(ConfigError) as excinfo:
        loader(tmp_path)
    assert_mentions(excinfo, [f"{path}: ", *fragments])


def test_load_contract_reads_tmp_dir(tmp_path: Path) -> None:
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(_contract()))

    contract = load_contract(tmp_path)

    assert contract.name == "tiny"
    assert contract.feature_names == ["x", "colour"]


def test_load_contract_uses_ct_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(_contract(name="from_env")))
    monkeypatch.setenv("CT_CONFIG_DIR", str(tmp_path))

    assert load_contract().name == "from_env"


def test_load_contract_errors_name_the_file_path(tmp_path: Path) -> None:
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(_contract(_replace("x", type="decimal"))))

    with pytest.raises(ConfigError) as excinfo:
        load_contract(tmp_path)
    assert_mentions(excinfo, [f"{path}: column 'x'", "type 'decimal'", f"is not one of {TYPES_TEXT}"])


# --------------------------------------------------------------------------------------------------
# load_policy: sections, fields and their types
# --------------------------------------------------------------------------------------------------


def _write_policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


POLICY_ERROR_CASES = [
    pytest.param(
        "alert: {on_call: [a@example.com]}\n",
        ": unknown section(s) ['alert']; expected ['alerts', 'drift', 'gate', 'model', 'release', 'serving', 'training']",
        id="unknown-section",
    ),
    pytest.param("training: 5\n", ": training: expected a mapping, got int", id="section-int"),
    pytest.param(
        "release: {shadow_share: 1.5}\n",
        ": release.shadow_share: expected a share between 0 and 1, got 1.5",
        id="release-share",
    ),
    pytest.param(
        "release: {watch_minutes: 0}\n",
        ": release.watch_minutes: expected a positive number, got 0",
        id="release-positive",
    ),
    pytest.param(
        "release: {watch_minutes: 2000}\n",
        ": release.watch_minutes: expected at most 1440 (a day), got 2000",
        id="release-watch-day",
    ),
    pytest.param(
        "release: {shadow_max_wait_minutes: 1500}\n",
        ": release.shadow_max_wait_minutes: expected at most 1440 (a day), got 1500",
        id="release-shadow-day",
    ),
    pytest.param(
        "release: {shadow: true, shadow_share: 0}\n",
        ": release.shadow: the shadow stage waits for shadow-scored rows, but shadow_share is 0",
        id="release-shadow-without-share",
    ),
    pytest.param(
        "drift: {unseen_category_floor: 0}\n",
        ": drift.unseen_category_floor: expected a share in (0, 1], got 0",
        id="drift-unseen-floor",
    ),
    pytest.param(
        "drift: {windows_drifted: 3, windows_considered: 2}\n",
        ": drift.windows_drifted: 3 drifted windows can never be found among the last windows_considered=2",
        id="drift-n-of-m",
    ),
    pytest.param(
        "drift: {windows_considered: 1.5}\n",
        ": drift.windows_considered: expected a whole number >= 1, got 1.5",
        id="drift-windows-whole",
    ),
    pytest.param(
        "alerts: {no_traffic_minutes: -5}\n",
        ": alerts.no_traffic_minutes: expected a number >= 0, got -5",
        id="alerts-no-traffic",
    ),
    pytest.param(
        "alerts: {data_missing_days: 0}\n",
        ": alerts.data_missing_days: expected a whole number >= 1, got 0",
        id="alerts-missing-days",
    ),
    pytest.param(
        "drift: {min_drifted_columns: 0}\n",
        ": drift.min_drifted_columns: expected a whole number >= 1, got 0",
        id="drift-min-columns",
    ),
    pytest.param(
        "release: {shadow_min_rows: 10.5}\n",
        ": release.shadow_min_rows: expected a whole number, got 10.5",
        id="release-whole",
    ),
    pytest.param(
        "serving: {out_of_range: clip}\n",
        ": serving.out_of_range: expected one of ['reject', 'score'], got 'clip'",
        id="serving-action",
    ),
    pytest.param(
        "serving: {max_rows: 0}\n",
        ": serving.max_rows: expected a positive integer, got 0",
        id="serving-rows",
    ),
    pytest.param(
        "serving: {require_token: 'yes'}\n",
        ": serving.require_token: expected true or false, got 'yes'",
        id="bool-given-string",
    ),
    pytest.param("gate: [roc_auc]\n", ": gate: expected a mapping, got list", id="section-list"),
    pytest.param("model: loan_default\n", ": model: expected a mapping, got str", id="section-str"),
    pytest.param(
        "gate: {metric: roc_auc, min_auc: 0.7}\n",
        ": gate: unknown field(s) ['min_auc']; expected some of ['approval_timeout_hours', 'max_regression', 'metric', 'min_value', 'require_approval']",
        id="unknown-field",
    ),
    pytest.param(
        "training: {window_days: '28'}\n",
        ": training.window_days: expected a number, got '28'",
        id="int-given-string",
    ),
    pytest.param(
        "gate: {min_value: high}\n",
        ": gate.min_value: expected a number, got 'high'",
        id="float-given-string",
    ),
    pytest.param(
        "drift: {threshold: true}\n", ": drift.threshold: expected a number, got True", id="float-given-bool"
    ),
    pytest.param(
        "training: {min_partitions: false}\n",
        ": training.min_partitions: expected a number, got False",
        id="int-given-bool",
    ),
    pytest.param(
        "training: {window_days: null}\n",
        ": training.window_days: expected a number, got None",
        id="int-given-null",
    ),
    pytest.param("model: {name: 42}\n", ": model.name: expected a string, got 42", id="str-given-int"),
    pytest.param(
        "drift: {num_method: [wasserstein]}\n",
        ": drift.num_method: expected a string, got ['wasserstein']",
        id="str-given-list",
    ),
    pytest.param(
        "alerts: {on_call: {team: ops}}\n",
        ": alerts.on_call: expected a list, got {'team': 'ops'}",
        id="tuple-given-mapping",
    ),
    pytest.param("alerts: {on_call: 5}\n", ": alerts.on_call: expected a list, got 5", id="tuple-given-int"),
    pytest.param(
        "model: {params: [1, 2]}\n", ": model.params: expected a mapping, got [1, 2]", id="dict-given-list"
    ),
    pytest.param(
        "model: {params: max_iter=200}\n",
        ": model.params: expected a mapping, got 'max_iter=200'",
        id="dict-given-string",
    ),
]


@pytest.mark.parametrize(("text", "expected"), POLICY_ERROR_CASES)
def test_load_policy_errors_name_file_field_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    path = _write_policy(tmp_path, text)

    with pytest.raises(ConfigError, match=re.escape(f"{path}{expected}")):
        load_policy(tmp_path)


def test_load_policy_empty_sections_take_defaults(tmp_path: Path) -> None:
    _write_policy(tmp_path, "model:\ntraining:\ngate: {}\n")

    policy = load_policy(tmp_path)

    assert policy == Policy(
        model=ModelPolicy(),
        training=TrainingPolicy(),
        gate=GatePolicy(),
        drift=DriftPolicy(),
        alerts=AlertPolicy(),
    )


def test_load_policy_partial_section_keeps_other_defaults(tmp_path: Path) -> None:
    _write_policy(tmp_path, "training: {window_days: 14}\ngate: {min_value: 1}\n")

    policy = load_policy(tmp_path)

    assert policy.training.window_days == 14
    assert policy.training.holdout_days == TrainingPolicy().holdout_days
    assert policy.gate.min_value == 1
    assert policy.gate.metric == GatePolicy().metric


@pytest.mark.parametrize(
    ("text", "on_call"),
    [
        pytest.param("alerts: {on_call: ops@example.com}\n", ("ops@example.com",), id="scalar-string"),
        pytest.param(
            "alerts: {on_call: [a@example.com, b@example.com]}\n",
            ("a@example.com", "b@example.com"),
            id="list",
        ),
        pytest.param("alerts: {on_call: []}\n", (), id="empty-list"),
    ],
)
def test_load_policy_on_call_becomes_a_tuple(tmp_path: Path, text: str, on_call: tuple[str, ...]) -> None:
    _write_policy(tmp_path, text)

    policy = load_policy(tmp_path)

    assert policy.alerts.on_call == on_call
    assert isinstance(policy.alerts.on_call, tuple)


# --------------------------------------------------------------------------------------------------
# _build directly: the `where` label and each type check
# --------------------------------------------------------------------------------------------------

BUILD_WHERE = "somewhere: section"


@pytest.mark.parametrize(
    ("cls", "data", "expected"),
    [
        pytest.param(
            GatePolicy, "roc_auc", "somewhere: section: expected a mapping, got str", id="not-a-mapping"
        ),
        pytest.param(
            DriftPolicy, 0.1, "somewhere: section: expected a mapping, got float", id="not-a-mapping-float"
        ),
        pytest.param(
            ModelPolicy,
            {"name": "m", "version": 1},
            "somewhere: section: unknown field(s) ['version']; expected some of ['name', 'params']",
            id="unknown-field",
        ),
        pytest.param(
            TrainingPolicy,
            {"holdout_days": "2"},
            "somewhere: section.holdout_days: expected a number, got '2'",
            id="number-given-string",
        ),
        pytest.param(
            DriftPolicy,
            {"cooldown_hours": True},
            "somewhere: section.cooldown_hours: expected a number, got True",
            id="number-given-bool",
        ),
        pytest.param(
            AlertPolicy,
            {"from_email": 7},
            "somewhere: section.from_email: expected a string, got 7",
            id="string-given-number",
        ),
        pytest.param(
            AlertPolicy,
            {"on_call": {"a": 1}},
            "somewhere: section.on_call: expected a list, got {'a': 1}",
            id="tuple-given-mapping",
        ),
        pytest.param(
            ModelPolicy,
            {"params": ["max_iter", 200]},
            "somewhere: section.params: expected a mapping, got ['max_iter', 200]",
            id="dict-given-list",
        ),
    ],
)
def test_build_refuses_wrong_types(cls: type, data: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        _build(cls, data, BUILD_WHERE)


@pytest.mark.parametrize(
    ("cls", "data", "expected"),
    [
        pytest.param(GatePolicy, None, GatePolicy(), id="none-gives-defaults"),
        pytest.param(
            AlertPolicy,
            {"on_call": "x@example.com"},
            AlertPolicy(on_call=("x@example.com",)),
            id="scalar-string-tuple",
        ),
        pytest.param(AlertPolicy, {"on_call": ["a", "b"]}, AlertPolicy(on_call=("a", "b")), id="list-tuple"),
        pytest.param(GatePolicy, {"min_value": 1}, GatePolicy(min_value=1), id="int-for-float"),
        pytest.param(
            DriftPolicy, {"window_hours": 12.5}, DriftPolicy(window_hours=12.5), id="float-for-number"
        ),
        pytest.param(
            ModelPolicy, {"params": {"max_iter": 5}}, ModelPolicy(params={"max_iter": 5}), id="dict"
        ),
    ],
)
def test_build_accepts_valid_values(cls: type, data: Any, expected: Any) -> None:
    assert _build(cls, data, BUILD_WHERE) == expected


# --------------------------------------------------------------------------------------------------
# CT_MODEL_NAME and CT_ALERT_TO override policy.yaml
# --------------------------------------------------------------------------------------------------

OVERRIDE_POLICY = """\
model:
  name: yaml_model
  params: {max_iter: 7}
alerts:
  on_call: [yaml@example.com]
  from_email: ct@example.org
"""


@pytest.fixture
def override_dir(tmp_path: Path) -> Path:
    _write_policy(tmp_path, OVERRIDE_POLICY)
    return tmp_path


def test_without_overrides_yaml_values_hold(override_dir: Path) -> None:
    policy = load_policy(override_dir)

    assert policy.model == ModelPolicy(name="yaml_model", params={"max_iter": 7})
    assert policy.alerts == AlertPolicy(on_call=("yaml@example.com",), from_email="ct@example.org")


def test_ct_model_name_overrides_model_name(override_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_MODEL_NAME", "env_model")

    policy = load_policy(override_dir)

    assert policy.model.name == "env_model"
    assert policy.model.params == {"max_iter": 7}
    assert policy.alerts.on_call == ("yaml@example.com",)


@pytest.mark.parametrize(
    ("value", "on_call"),
    [
        pytest.param("ops@example.com", ("ops@example.com",), id="one"),
        pytest.param("a@example.com,b@example.com", ("a@example.com", "b@example.com"), id="two"),
        pytest.param(
            " a@example.com , ,b@example.com,, ", ("a@example.com", "b@example.com"), id="blanks-dropped"
        ),
    ],
)
def test_ct_alert_to_overrides_on_call(
    override_dir: Path, monkeypatch: pytest.MonkeyPatch, value: str, on_call: tuple[str, ...]
) -> None:
    monkeypatch.setenv("CT_ALERT_TO", value)

    policy = load_policy(override_dir)

    assert policy.alerts.on_call == on_call
    assert policy.alerts.from_email == "ct@example.org"
    assert policy.model.name == "yaml_model"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("CT_MODEL_NAME", "", id="empty-model-name"),
        pytest.param("CT_ALERT_TO", "", id="empty-alert-to"),
        pytest.param("CT_ALERT_TO", " , ,", id="only-blank-alert-to"),
    ],
)
def test_blank_overrides_leave_yaml_values(
    override_dir: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)

    policy = load_policy(override_dir)

    assert policy.model.name == "yaml_model"
    assert policy.alerts.on_call == ("yaml@example.com",)


def test_both_overrides_together(override_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_MODEL_NAME", "env_model")
    monkeypatch.setenv("CT_ALERT_TO", "x@example.com")

    policy = load_policy(override_dir)

    assert policy.model == ModelPolicy(name="env_model", params={"max_iter": 7})
    assert policy.alerts == AlertPolicy(on_call=("x@example.com",), from_email="ct@example.org")


def test_overrides_apply_to_the_shipped_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_MODEL_NAME", "other_model")
    monkeypatch.setenv("CT_ALERT_TO", "team@example.com")

    policy = load_policy(SHIPPED_CONFIG_DIR)

    assert policy.model.name == "other_model"
    assert policy.alerts.on_call == ("team@example.com",)
