"""Typed loading of the dataset contract (``dataset.yaml``) and the policies (``policy.yaml``).

Errors name the file and the field and say what was expected, because the person reading them is
adapting these files to their own data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from continuous_training.settings import load_settings

COLUMN_TYPES = ("integer", "float", "string", "category", "timestamp")
ROLES = ("key", "timestamp", "feature", "target")


class ConfigError(ValueError):
    """A configuration file does not say what the project needs."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    role: str
    min: float | None = None
    max: float | None = None
    values: tuple[Any, ...] | None = None
    nullable: bool = False

    @property
    def is_numeric(self) -> bool:
        return self.type in ("integer", "float")


@dataclass(frozen=True)
class DatasetContract:
    name: str
    columns: tuple[Column, ...]
    min_rows: int = 1

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def _one(self, role: str) -> str:
        return next(c.name for c in self.columns if c.role == role)

    @property
    def key(self) -> str:
        return self._one("key")

    @property
    def timestamp(self) -> str:
        return self._one("timestamp")

    @property
    def target(self) -> str:
        return self._one("target")

    @property
    def features(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.role == "feature")

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @property
    def numeric_features(self) -> list[str]:
        return [c.name for c in self.features if c.is_numeric]

    @property
    def categorical_features(self) -> list[str]:
        return [c.name for c in self.features if c.type == "category"]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class ModelPolicy:
    name: str = "loan_default"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingPolicy:
    window_days: int = 28
    holdout_days: int = 2
    min_partitions: int = 5
    refresh_after_new_partitions: int = 7
    reference_sample_rows: int = 5000


@dataclass(frozen=True)
class GatePolicy:
    metric: str = "roc_auc"
    min_value: float = 0.70
    max_regression: float = 0.005
    #: A person approves each version that passed the gate before it deploys (Airflow's
    #: Human-in-the-loop: the request is in the UI's Required Actions, on-call is mailed).
    require_approval: bool = False
    #: Hours a request waits for an answer; then it is rejected (the champion stays).
    approval_timeout_hours: float = 24.0


@dataclass(frozen=True)
class DriftPolicy:
    num_method: str = "wasserstein"
    cat_method: str = "jensenshannon"
    threshold: float = 0.1
    min_rows: int = 2000
    min_drifted_columns: int = 1
    window_hours: float = 24
    cooldown_hours: float = 6
    unseen_category_floor: float = 0.01
    #: Retrain when at least ``windows_drifted`` of the last ``windows_considered`` judged windows of the
    #: champion drifted (each with at least ``min_drifted_columns`` drifted columns).
    windows_drifted: int = 1
    windows_considered: int = 1
    #: Whether a drifted prediction (the served scores against the model's holdout scores) counts as a
    #: drifted column towards ``min_drifted_columns``; it is reported either way.
    prediction_drift_counts: bool = False


@dataclass(frozen=True)
class AlertPolicy:
    on_call: tuple[str, ...] = ("oncall@example.com",)
    from_email: str = "continuous-training@localhost"
    #: A day's batch must have landed this many hours after the day's end (UTC), or it is mailed missing...
    data_missing_after_hours: float = 6
    #: ...for the first this many days of an outage (one mail per day).
    data_missing_days: int = 3
    #: No row served for this many minutes while a champion is deployed mails once per silence (0: off).
    no_traffic_minutes: float = 60


#: What the endpoint does with a value outside its column's declared range or category list.
OUT_OF_RANGE_ACTIONS = ("reject", "score")


@dataclass(frozen=True)
class ServingPolicy:
    """Limits and checks of the prediction endpoint (``policy.yaml``, ``serving:``).

    Attributes:
        max_body_bytes: largest ``/predict`` body accepted (413 beyond it, checked before it is read).
        max_rows: most rows in one request (413 beyond it).
        out_of_range: ``reject`` answers 422 for a value outside the contract's ``min``/``max`` or an
            unseen category; ``score`` scores the row and flags it in the prediction log.
        require_token: ``/predict`` needs ``Authorization: Bearer <token>`` (the token file under the
            secrets folder); off in the embedded stack, which listens on loopback only.
    """

    max_body_bytes: int = 4 * 1024 * 1024
    max_rows: int = 10_000
    out_of_range: str = "score"
    require_token: bool = False


@dataclass(frozen=True)
class ReleasePolicy:
    """How a registered version reaches the ``champion`` alias, and how it is watched after (``release:``).

    Attributes:
        shadow_share: share of ``/predict`` requests the endpoint also scores with the ``challenger``
            version (off the request path; both scores go to the prediction log). 0 turns shadow
            scoring off.
        shadow: the train DAG waits for the shadow verdict before deploying.
        shadow_min_rows: shadow-scored rows needed before the verdict.
        shadow_max_wait_minutes: longest wait for them; then the promotion is blocked.
        shadow_min_agreement: share of rows both versions must decide alike (score at or above
            ``decision_threshold``).
        shadow_max_score_shift: largest Wasserstein distance between the two versions' scores.
        shadow_max_error_rate: largest share of rows the challenger failed to score.
        shadow_poll_seconds: how often the shadow stage reads the prediction log.
        decision_threshold: the score at and above which a row is decided positive.
        watch: watch each new champion on live traffic and roll back on a breach.
        watch_minutes: how long a new champion is watched.
        watch_min_rows: served rows needed before the figures are compared.
        watch_max_error_rate: largest share of failed (or non-finite) scores.
        watch_max_p99_ratio: largest p99 latency as a multiple of the previous champion's.
        watch_max_score_shift: largest Wasserstein distance from the previous champion's scores.
        watch_poll_seconds: how often the watcher reads the prediction log.
    """

    shadow_share: float = 1.0
    shadow: bool = False
    shadow_min_rows: int = 1000
    shadow_max_wait_minutes: float = 60.0
    shadow_min_agreement: float = 0.9
    shadow_max_score_shift: float = 0.1
    shadow_max_error_rate: float = 0.0
    shadow_poll_seconds: float = 30.0
    decision_threshold: float = 0.5
    watch: bool = True
    watch_minutes: float = 30.0
    watch_min_rows: int = 200
    watch_max_error_rate: float = 0.01
    watch_max_p99_ratio: float = 3.0
    watch_max_score_shift: float = 0.2
    watch_poll_seconds: float = 30.0


@dataclass(frozen=True)
class Policy:
    model: ModelPolicy
    training: TrainingPolicy
    gate: GatePolicy
    drift: DriftPolicy
    alerts: AlertPolicy
    serving: ServingPolicy = field(default_factory=ServingPolicy)
    release: ReleasePolicy = field(default_factory=ReleasePolicy)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: file not found (set CT_CONFIG_DIR to the folder holding it)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    defaults = cls()
    kwargs = {}
    for name, value in data.items():
        expected = type(getattr(defaults, name))
        if expected is bool and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        if expected in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
        if expected is str and not isinstance(value, str):
            raise ConfigError(f"{where}.{name}: expected a string, got {value!r}")
        if expected is tuple:
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list):
                raise ConfigError(f"{where}.{name}: expected a list, got {value!r}")
            value = tuple(value)
        if expected is dict and not isinstance(value, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping, got {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def parse_contract(data: dict[str, Any], where: str = "dataset.yaml") -> DatasetContract:
    """Build a :class:`DatasetContract` from parsed YAML, checking every column.

    Raises:
        ConfigError: naming the file, the column and what was expected.
    """
    raw_columns = data.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise ConfigError(f"{where}: `columns` must be a non-empty list of column specs")
    columns = []
    seen: set[str] = set()
    for i, spec in enumerate(raw_columns):
        at = f"{where}: columns[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"{at}: expected a mapping with at least `name`, `type` and `role`")
        at = f"{where}: column {spec['name']!r}"
        unknown = sorted(set(spec) - {f.name for f in fields(Column)})
        if unknown:
            raise ConfigError(f"{at}: unknown field(s) {unknown}")
        if spec.get("type") not in COLUMN_TYPES:
            raise ConfigError(f"{at}: type {spec.get('type')!r} is not one of {list(COLUMN_TYPES)}")
        if spec.get("role") not in ROLES:
            raise ConfigError(f"{at}: role {spec.get('role')!r} is not one of {list(ROLES)}")
        if spec["name"] in seen:
            raise ConfigError(f"{at}: declared twice")
        seen.add(spec["name"])
        if spec["type"] == "category" and not spec.get("values"):
            raise ConfigError(f"{at}: a category column needs its list of `values`")
        values = tuple(spec["values"]) if spec.get("values") is not None else None
        columns.append(Column(**{**spec, "values": values}))
    for role in ("key", "timestamp", "target"):
        count = sum(c.role == role for c in columns)
        if count != 1:
            raise ConfigError(f"{where}: expected exactly one column with role {role!r}, found {count}")
    if not any(c.role == "feature" for c in columns):
        raise ConfigError(f"{where}: no column has role 'feature'")
    unknown = sorted(set(data) - {"name", "columns", "min_rows"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level field(s) {unknown}")
    return DatasetContract(
        name=str(data.get("name", "dataset")), columns=tuple(columns), min_rows=int(data.get("min_rows", 1))
    )


def load_contract(config_dir: Path | None = None) -> DatasetContract:
    """Load ``dataset.yaml`` from the config folder (``CT_CONFIG_DIR``)."""
    path = (config_dir or load_settings().config_dir) / "dataset.yaml"
    return parse_contract(_read_yaml(path), where=str(path))


def load_policy(config_dir: Path | None = None) -> Policy:
    """Load ``policy.yaml``; ``CT_MODEL_NAME`` and ``CT_ALERT_TO`` (comma-separated) override it."""
    settings = load_settings()
    path = (config_dir or settings.config_dir) / "policy.yaml"
    data = _read_yaml(path)
    sections = {
        "model": ModelPolicy,
        "training": TrainingPolicy,
        "gate": GatePolicy,
        "drift": DriftPolicy,
        "alerts": AlertPolicy,
        "serving": ServingPolicy,
        "release": ReleasePolicy,
    }
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; expected {sorted(sections)}")
    built = {key: _build(cls, data.get(key), f"{path}: {key}") for key, cls in sections.items()}
    if settings.model_name:
        built["model"] = ModelPolicy(name=settings.model_name, params=built["model"].params)
    if settings.alert_to:
        built["alerts"] = AlertPolicy(on_call=settings.alert_to, from_email=built["alerts"].from_email)
    serving = built["serving"]
    if serving.out_of_range not in OUT_OF_RANGE_ACTIONS:
        raise ConfigError(
            f"{path}: serving.out_of_range: expected one of {list(OUT_OF_RANGE_ACTIONS)}, "
            f"got {serving.out_of_range!r}"
        )
    for name in ("max_body_bytes", "max_rows"):
        if not isinstance(getattr(serving, name), int) or getattr(serving, name) < 1:
            raise ConfigError(
                f"{path}: serving.{name}: expected a positive integer, got {getattr(serving, name)!r}"
            )
    _check_drift(built["drift"], f"{path}: drift")
    _check_release(built["release"], f"{path}: release")
    _check_alerts(built["alerts"], f"{path}: alerts")
    return Policy(**built)


def _check_drift(drift: DriftPolicy, where: str) -> None:
    if not 0 < drift.unseen_category_floor <= 1:
        raise ConfigError(
            f"{where}.unseen_category_floor: expected a share in (0, 1], got {drift.unseen_category_floor!r}"
        )
    for name in ("min_drifted_columns", "windows_drifted", "windows_considered"):
        value = getattr(drift, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{name}: expected a whole number >= 1, got {value!r}")
    if drift.windows_drifted > drift.windows_considered:
        raise ConfigError(
            f"{where}.windows_drifted: {drift.windows_drifted} drifted windows can never be found among the "
            f"last windows_considered={drift.windows_considered}; expected windows_drifted <= windows_considered"
        )


def _check_alerts(alerts: AlertPolicy, where: str) -> None:
    for name in ("data_missing_after_hours", "no_traffic_minutes"):
        if getattr(alerts, name) < 0:
            raise ConfigError(f"{where}.{name}: expected a number >= 0, got {getattr(alerts, name)!r}")
    days = alerts.data_missing_days
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"{where}.data_missing_days: expected a whole number >= 1, got {days!r}")


def _check_release(release: ReleasePolicy, where: str) -> None:
    shares = (
        "shadow_share",
        "shadow_min_agreement",
        "shadow_max_error_rate",
        "decision_threshold",
        "watch_max_error_rate",
    )
    for name in shares:
        value = getattr(release, name)
        if not 0 <= value <= 1:
            raise ConfigError(f"{where}.{name}: expected a share between 0 and 1, got {value!r}")
    positive = (
        "shadow_min_rows",
        "shadow_max_wait_minutes",
        "watch_minutes",
        "watch_min_rows",
        "watch_max_p99_ratio",
        "watch_poll_seconds",
        "shadow_poll_seconds",
        "shadow_max_score_shift",
        "watch_max_score_shift",
    )
    for name in positive:
        value = getattr(release, name)
        if not value > 0:
            raise ConfigError(f"{where}.{name}: expected a positive number, got {value!r}")
    # The watch and shadow tasks' execution_timeout (a day and an hour) covers the longest wait.
    for name in ("watch_minutes", "shadow_max_wait_minutes"):
        if getattr(release, name) > 1440:
            raise ConfigError(
                f"{where}.{name}: expected at most 1440 (a day), got {getattr(release, name)!r}"
            )
    if release.shadow and release.shadow_share == 0:
        raise ConfigError(
            f"{where}.shadow: the shadow stage waits for shadow-scored rows, but shadow_share is 0 "
            "(nothing is scored); set shadow_share above 0 or shadow to false"
        )
    for name in ("shadow_min_rows", "watch_min_rows"):
        if not isinstance(getattr(release, name), int):
            raise ConfigError(f"{where}.{name}: expected a whole number, got {getattr(release, name)!r}")
