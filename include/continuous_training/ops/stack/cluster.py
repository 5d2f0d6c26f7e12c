"""The cluster's data services: its own PostgreSQL and Redis, the databases, and the URLs to reach them.

PostgreSQL 15 and Redis come from the operating system's packages (Debian: ``postgresql-15``,
``redis-server``); nothing here downloads. Both run as parts of the stack under ``CT_HOME``, on
loopback, with generated passwords in ``<secrets>/cluster.json`` (mode 0600):

* ``postgres``: a cluster made by ``initdb`` in ``<home>/postgres/data`` on ``CT_POSTGRES_PORT``
  (password authentication over TCP, peer authentication on its private socket). Started as the
  ``postgres`` system user when the stack runs as root (``initdb`` refuses root). With
  ``CT_POSTGRES_URL`` the stack starts no server and creates its roles and databases on that one.
* ``redis``: ``redis-server`` with its own config file (mode 0600) on ``CT_REDIS_PORT``, ``requirepass``
  set, persistence off (the broker's queue is rebuilt from Airflow's database after a restart).

Databases: ``airflow`` (Airflow's metadata and Celery's results, role ``airflow``), ``mlflow`` (the
tracking and registry store) and ``mlflow_auth`` (MLflow's users and permissions), both role
``mlflow``. :func:`provision_databases` creates what is missing and resets the passwords to those in
the secrets file, so it is idempotent and runs at every ``ct stack up``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from continuous_training.credentials import CredentialError, check_secret, private_json
from continuous_training.ops.stack.errors import StackError
from continuous_training.settings import Settings

log = logging.getLogger(__name__)

#: Database -> owning role.
DATABASES = {"airflow": "airflow", "mlflow": "mlflow", "mlflow_auth": "mlflow"}
#: Roles -> key of their password in ``cluster.json``.
ROLES = {"airflow": "airflow_db", "mlflow": "mlflow_db"}
#: The superuser of a cluster made by ``initdb`` here.
SUPERUSER = "postgres"
#: The system account PostgreSQL runs as when the stack runs as root.
POSTGRES_SYSTEM_USER = "postgres"
#: Seconds ``initdb`` may take (4 s measured).
INITDB_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Server:
    """Where a PostgreSQL server listens and how to log in as its administrator."""

    host: str
    port: int
    admin_user: str
    admin_password: str
    admin_database: str = "postgres"


def cluster_secrets_file(settings: Settings) -> Path:
    return settings.secrets_dir / "cluster.json"


def cluster_secrets(settings: Settings) -> dict[str, str]:
    """The cluster's passwords, generated on first use: ``postgres``, ``airflow_db``, ``mlflow_db``, ``redis``.

    Raises:
        StackError: the file is unreadable, or holds an empty, short or well-known password.
    """
    path = cluster_secrets_file(settings)
    try:
        data = private_json(
            path,
            {
                key: (lambda: secrets.token_urlsafe(24))
                for key in ("postgres", "airflow_db", "mlflow_db", "redis")
            },
            "an object with postgres, airflow_db, mlflow_db, redis",
        )
        for key, value in data.items():
            check_secret(f"{path}: {key}", value)
    except CredentialError as exc:
        raise StackError(str(exc)) from exc
    return data


def server(settings: Settings) -> Server:
    """The PostgreSQL server of the cluster: ``CT_POSTGRES_URL``'s, or the one the stack runs."""
    if settings.postgres_url:
        parts = urlsplit(settings.postgres_url)
        if parts.scheme.split("+")[0] not in ("postgresql", "postgres") or not parts.hostname:
            raise StackError(
                f"CT_POSTGRES_URL: expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE, "
                f"found scheme {parts.scheme!r}"
            )
        return Server(
            host=parts.hostname,
            port=parts.port or 5432,
            admin_user=unquote(parts.username or SUPERUSER),
            admin_password=unquote(parts.password or ""),
            admin_database=parts.path.lstrip("/") or "postgres",
        )
    return Server(settings.host, settings.postgres_port, SUPERUSER, cluster_secrets(settings)["postgres"])


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def database_url(settings: Settings, database: str, driver: str = "postgresql+psycopg2") -> str:
    """SQLAlchemy URL of one of :data:`DATABASES`, as its owning role (holds the password)."""
    role = DATABASES[database]
    password = cluster_secrets(settings)[ROLES[role]]
    where = server(settings)
    return f"{driver}://{role}:{quote(password, safe='')}@{_host(where.host)}:{where.port}/{database}"


def broker_url(settings: Settings) -> str:
    """Celery's broker: the cluster's Redis, database 0 (holds the password)."""
    password = cluster_secrets(settings)["redis"]
    return f"redis://:{quote(password, safe='')}@{_host(settings.host)}:{settings.redis_port}/0"


# ---- PostgreSQL -----------------------------------------------------------------------------------


def postgres_bin(name: str) -> Path:
    """A PostgreSQL server program (``postgres``, ``initdb``): on PATH, else Debian's newest version.

    Raises:
        StackError: PostgreSQL's server programs are not installed.
    """
    found = shutil.which(name)
    if found and name != "postgres":
        return Path(found)
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1])
    if found:
        return Path(found)
    raise StackError(
        f"PostgreSQL's {name!r} program was not found (on PATH or in /usr/lib/postgresql/*/bin); "
        "install the server package (Debian: `apt-get install postgresql`) or give the cluster a "
        "running server with CT_POSTGRES_URL"
    )


def _as_root() -> bool:
    return os.geteuid() == 0


def _drop_privileges() -> list[str]:
    """Command prefix that runs a program as the ``postgres`` system user when we are root."""
    if not _as_root():
        return []
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError as exc:
        raise StackError(
            f"PostgreSQL refuses to run as root, and there is no {POSTGRES_SYSTEM_USER!r} system user "
            "to run it as; create one or run `ct stack up --cluster` as an ordinary user"
        ) from exc
    return [
        "setpriv",
        f"--reuid={POSTGRES_SYSTEM_USER}",
        f"--regid={POSTGRES_SYSTEM_USER}",
        "--init-groups",
        "--",
    ]


def _hand_over(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    if _as_root():
        user = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


def _allow_traversal(settings: Settings) -> None:
    """Let the ``postgres`` user reach its folder: execute (not read) permission on ``CT_HOME``.

    Raises:
        StackError: a folder above ``CT_HOME`` does not let other users through.
    """
    if not _as_root():
        return
    for folder in (settings.home, settings.postgres_dir):
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
    for folder in settings.home.parents:
        if not folder.stat().st_mode & 0o001:
            raise StackError(
                f"PostgreSQL runs as the {POSTGRES_SYSTEM_USER!r} user, which cannot pass through "
                f"{folder} (mode {folder.stat().st_mode & 0o777:o}) to reach {settings.postgres_dir}; "
                f"`chmod o+x {folder}` or choose a CT_HOME elsewhere"
            )


def postgres_data_dir(settings: Settings) -> Path:
    return settings.postgres_dir / "data"


def postgres_socket_dir(settings: Settings) -> Path:
    return settings.postgres_dir / "run"


def init_postgres(settings: Settings, log_path: Path) -> None:
    """``initdb`` the cluster's own server once (no-op when its data folder holds a cluster).

    Raises:
        StackError: ``initdb`` failed (its output is in ``log_path``).
    """
    data = postgres_data_dir(settings)
    if (data / "PG_VERSION").exists():
        return
    settings.postgres_dir.mkdir(parents=True, exist_ok=True)
    _allow_traversal(settings)
    _hand_over(data, 0o700)
    _hand_over(postgres_socket_dir(settings), 0o700)
    pwfile = settings.postgres_dir / "initdb.pw"
    pwfile.write_text(cluster_secrets(settings)["postgres"] + "\n")
    pwfile.chmod(0o600)
    if _as_root():
        user = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    command = [
        *_drop_privileges(),
        str(postgres_bin("initdb")),
        "-D",
        str(data),
        "-U",
        SUPERUSER,
        f"--pwfile={pwfile}",
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    ]
    log.info("postgres: initdb %s ...", data)
    try:
        with open(log_path, "ab") as out:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=INITDB_TIMEOUT_S,
                check=False,
                cwd=settings.postgres_dir,
            )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        # Leave no half-made cluster behind: the next `up` starts over.
        with contextlib.suppress(OSError):
            shutil.rmtree(data)
        raise StackError(f"`initdb` exited with code {result.returncode}; see {log_path}")


def postgres_command(settings: Settings) -> list[str]:
    """The server in the foreground (so the supervisor sees it exit), settings on its command line."""
    return [
        *_drop_privileges(),
        str(postgres_bin("postgres")),
        "-D",
        str(postgres_data_dir(settings)),
        "-c",
        f"listen_addresses={settings.host}",
        "-c",
        f"port={settings.postgres_port}",
        "-c",
        f"unix_socket_directories={postgres_socket_dir(settings)}",
        # Two schedulers, the dag-processor, the triggerer, the API server, the workers' task
        # processes and MLflow's workers each hold a pool of connections.
        "-c",
        "max_connections=200",
    ]


def _connect(where: Server, database: str | None = None):
    import psycopg2

    return psycopg2.connect(
        host=where.host,
        port=where.port,
        user=where.admin_user,
        password=where.admin_password,
        dbname=database or where.admin_database,
        connect_timeout=3,
    )


def postgres_health(settings: Settings) -> tuple[bool, str]:
    """(healthy, detail): the administrator can log in and run a query."""
    import psycopg2

    where = server(settings)
    try:
        with contextlib.closing(_connect(where)) as conn, conn.cursor() as cur:
            cur.execute("SELECT version()")
            version = cur.fetchone()[0]
    except psycopg2.Error as exc:
        return (
            False,
            f"no login ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})",
        )
    return True, version.split(" on ")[0]


def provision_databases(settings: Settings) -> None:
    """Create the roles and databases that are missing; set each role's password to the secret's.

    Raises:
        StackError: the server refused (the message names the role or database).
    """
    import psycopg2
    from psycopg2 import sql

    where = server(settings)
    passwords = cluster_secrets(settings)
    try:
        conn = _connect(where)
    except psycopg2.Error as exc:
        raise StackError(
            f"cannot log in to PostgreSQL at {where.host}:{where.port} as {where.admin_user}: {exc}"
        ) from exc
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for role, key in ROLES.items():
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                cur.execute(
                    sql.SQL(verb + " ROLE {} WITH LOGIN PASSWORD %s").format(sql.Identifier(role)),
                    (passwords[key],),
                )
            for database, owner in DATABASES.items():
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cur.fetchone() is None:
                    log.info("postgres: creating database %s (owner %s)", database, owner)
                    cur.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                            sql.Identifier(database), sql.Identifier(owner)
                        )
                    )
                # Only the owner connects (PUBLIC may by default).
                cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
    except psycopg2.Error as exc:
        raise StackError(f"provisioning PostgreSQL at {where.host}:{where.port} failed: {exc}") from exc
    finally:
        conn.close()


def init_mlflow_stores(settings: Settings) -> None:
    """Create (or migrate) MLflow's tables in ``mlflow`` and ``mlflow_auth`` once, before its workers start.

    Each of the server's two workers otherwise creates them on its first start, at the same time: the
    PostgreSQL log showed the race (``duplicate key value violates unique constraint
    "pg_type_typname_nsp_index"``). Idempotent: on a current schema it only checks the version.
    """
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(
        database_url(settings, "mlflow"), str((settings.mlflow_dir / "artifacts").resolve())
    )
    store.engine.dispose()
    auth = AuthStore()
    auth.init_db(database_url(settings, "mlflow_auth"))
    auth.engine.dispose()


# ---- Redis ----------------------------------------------------------------------------------------


def redis_bin() -> Path:
    found = shutil.which("redis-server")
    if not found:
        raise StackError(
            "`redis-server` was not found on PATH; the cluster's broker is Redis from the system's "
            "packages (Debian: `apt-get install redis-server`)"
        )
    return Path(found)


def redis_config_file(settings: Settings) -> Path:
    return settings.redis_dir / "redis.conf"


def write_redis_config(settings: Settings) -> Path:
    """Redis's config (mode 0600: it holds ``requirepass``), rewritten at every start."""
    folder = settings.redis_dir
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = redis_config_file(settings)
    lines = [
        "# Written by `ct stack up --cluster`; edits are overwritten.",
        f"bind {settings.host}",
        "protected-mode yes",
        f"port {settings.redis_port}",
        f"requirepass {cluster_secrets(settings)['redis']}",
        # Persistence off: Airflow re-queues what a restart lost (the scheduler's adoption of
        # orphaned tasks and the heartbeat timeout), and nothing else lives in this Redis.
        'save ""',
        "appendonly no",
        f"dir {folder}",
        "daemonize no",
        'logfile ""',
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def redis_command(settings: Settings) -> list[str]:
    return [str(redis_bin()), str(redis_config_file(settings))]


def redis_health(settings: Settings) -> tuple[bool, str]:
    import redis

    client = redis.Redis(
        host=settings.host,
        port=settings.redis_port,
        password=cluster_secrets(settings)["redis"],
        socket_connect_timeout=2,
        socket_timeout=2,
    )
    try:
        client.ping()
        version = client.info("server").get("redis_version")
    except redis.RedisError as exc:
        return False, f"no PING answer ({type(exc).__name__})"
    finally:
        client.close()
    return True, f"redis {version}"
