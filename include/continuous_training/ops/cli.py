"""``ct``: the command line of the project.

Each subcommand is wired by one ``add_<name>_command(subparsers)`` function listed in
:data:`COMMANDS`; it registers its parser and sets ``handler`` (a function ``(args) -> int``).
Adding a command means adding a function and one entry in :data:`COMMANDS`, nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

log = logging.getLogger(__name__)

Subparsers = Any  # argparse's _SubParsersAction is private; the functions below only call add_parser


# --------------------------------------------------------------------------------------------------
# ct stack up | down | status | env
# --------------------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace):
    from continuous_training.ops.stack import stack_settings

    return stack_settings(cluster=getattr(args, "cluster", False))


def _stack_up(args: argparse.Namespace) -> int:
    from continuous_training.credentials import MLFLOW_ADMIN, mlflow_credentials
    from continuous_training.ops.stack import airflow_password, part_url, stack_up

    settings = _settings(args)
    parts = [p for p in args.parts.split(",") if p.strip()] if args.parts else None
    stack_up(settings, parts=parts)
    print()
    print(f"The {settings.deployment} stack is up:")
    print(
        f"  Airflow UI      {part_url(settings, 'airflow-api-server')}   "
        f"(user admin, password {airflow_password(settings)})"
    )
    print(
        f"  MLflow UI       {part_url(settings, 'mlflow')}   "
        f"(user {MLFLOW_ADMIN}, password {mlflow_credentials(settings)[MLFLOW_ADMIN]})"
    )
    print(f"  endpoint        {part_url(settings, 'endpoint')}")
    print(f"  mail folder     {settings.mail_dir}   (SMTP {part_url(settings, 'smtp')})")
    print(f"  logs            {settings.log_dir}")
    print(f"  secrets         {settings.secrets_dir}   (mode 0600; never logged)")
    print('Run `eval "$(ct stack env)"` to point the airflow/mlflow CLIs at it; `ct stack down` stops it.')
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from continuous_training.ops.stack import stack_down

    settings = _settings(args)
    parts = [p for p in args.parts.split(",") if p.strip()] if args.parts else None
    stack_down(settings, parts=parts)
    print(
        f"The {settings.deployment} stack is stopped." if parts is None else f"Stopped: {', '.join(parts)}."
    )
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from continuous_training.ops.stack import stack_status

    status = stack_status(_settings(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{'part':<22} {'state':<10} {'pid':>8} {'restarts':>8}  {'health':<44} url")
    for part, info in status.items():
        health = ("healthy" if info["healthy"] else "UNHEALTHY") + f" ({info['health']})"
        if info["state"] == "stopped":
            health = "-"
        if info.get("last_reason") and info["state"] in ("failed", "restarting", "waiting", "orphaned"):
            health += f"; last exit: {info['last_reason']}"
        print(
            f"{part:<22} {info['state']:<10} {info['pid'] or '-':>8} {info.get('restarts') or 0:>8}  "
            f"{health:<44} {info['url'] or ''}"
        )
    return 0


def _stack_env(args: argparse.Namespace) -> int:
    from continuous_training.ops.stack import airflow_env, bin_dir

    settings = _settings(args)
    env = airflow_env(settings)
    print(f'# The {settings.deployment} stack\'s environment: eval "$(ct stack env)"')
    for key in sorted(env):
        print(f"export {key}={shlex.quote(env[key])}")
    # The stack's processes run without it, so they share one bytecode cache (PYTHONPYCACHEPREFIX).
    print("unset PYTHONDONTWRITEBYTECODE")
    print(f'export PATH={shlex.quote(str(bin_dir()))}:"$PATH"')
    return 0


def add_stack_command(subparsers: Subparsers) -> None:
    """Wire ``ct stack up|down|status|env``.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    stack = subparsers.add_parser(
        "stack",
        help="start, stop and inspect the embedded stack",
        description="The embedded stack: SMTP sink, MLflow, Airflow, endpoint.",
    )
    actions = stack.add_subparsers(dest="action", required=True, metavar="{up,down,status,env}")
    mode = argparse.ArgumentParser(add_help=False)
    mode.add_argument(
        "--cluster",
        action="store_true",
        help="the scaled-out stack (CeleryExecutor, PostgreSQL, Redis, DAGs from git); same as "
        "CT_DEPLOYMENT=cluster. `status`, `down` and `env` default to the mode `up` last started here.",
    )
    up = actions.add_parser(
        "up", parents=[mode], help="start every part (parts already running are left alone)"
    )
    up.add_argument(
        "--parts",
        default=None,
        help="comma-separated subset: smtp, mlflow, airflow (or airflow-api-server, "
        "airflow-scheduler, airflow-dag-processor, airflow-triggerer), endpoint; in the cluster "
        "also postgres, redis, workers (airflow-worker-N), airflow-scheduler-N",
    )
    up.set_defaults(handler=_stack_up)
    down = actions.add_parser("down", parents=[mode], help="stop what `up` started")
    down.add_argument("--parts", default=None, help="comma-separated subset (same names as `up --parts`)")
    down.set_defaults(handler=_stack_down)
    status = actions.add_parser("status", parents=[mode], help="state, pid, health and URL of each part")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=_stack_status)
    actions.add_parser("env", parents=[mode], help="print `export K=V` lines for a shell").set_defaults(
        handler=_stack_env
    )


# --------------------------------------------------------------------------------------------------
# ct demo | ct simulate
# --------------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from continuous_training.ops.demo import DemoPlan, run_demo

    # The demo prints its own progress; the simulator's per-file lines would repeat it.
    logging.getLogger("continuous_training.ops.simulate").setLevel(logging.WARNING)
    run_demo(_settings(args), plan=DemoPlan(start=date.fromisoformat(args.start), seed=args.seed))
    return 0


def add_demo_command(subparsers: Subparsers) -> None:
    """Wire ``ct demo``."""
    demo = subparsers.add_parser(
        "demo",
        help="bring the stack up and run the whole loop (ingest, train, serve, drift, retrain)",
        description="Runs the loop on the embedded stack through Airflow's scheduler and leaves the stack "
        "running. Running it again resumes or does nothing.",
    )
    demo.add_argument("--start", default="2026-11-02", help="first simulated day (YYYY-MM-DD)")
    demo.add_argument("--seed", type=int, default=42, help="simulator seed")
    demo.add_argument(
        "--cluster",
        action="store_true",
        help="on the cluster stack (CeleryExecutor, PostgreSQL, Redis, DAGs from git; CT_DEPLOYMENT=cluster)",
    )
    demo.set_defaults(handler=_demo)


def _simulate(args: argparse.Namespace) -> int:
    from continuous_training.lake import Lake
    from continuous_training.ops.simulate import SimulatorConfig, client_requests, land_day, send_traffic
    from continuous_training.settings import load_settings

    settings = load_settings()
    bad = dict(item.split("=", 1) for item in args.bad_day)
    config = SimulatorConfig(
        seed=args.seed,
        rows_per_day=args.rows_per_day,
        drift_from=date.fromisoformat(args.drift_from) if args.drift_from else None,
        bad_days=bad,
        label_delay_days=args.label_delay_days,
    )
    lake = Lake(settings.lake)
    start = date.fromisoformat(args.start)
    for i in range(args.days):
        day = start + timedelta(days=i)
        if args.traffic:
            sent = send_traffic(args.endpoint or settings.endpoint_url, client_requests(day, config))
            print(
                f"{day}: sent {sent['rows']} rows in {sent['requests']} requests, {sent['failed_requests']} failed"
            )
        for path in land_day(lake, day, config):
            print(f"{day}: landed {path}")
    return 0


def add_simulate_command(subparsers: Subparsers) -> None:
    """Wire ``ct simulate``."""
    sim = subparsers.add_parser(
        "simulate",
        help="drop simulated daily batches in the landing folder (and play clients)",
        description="The project's seeded data source: labelled daily batches of loan applications written "
        "to $CT_LAKE/landing/<day>/, optionally with covariate shift and bad batches.",
    )
    sim.add_argument("--start", required=True, help="first day (YYYY-MM-DD)")
    sim.add_argument("--days", type=int, default=1, help="number of days")
    sim.add_argument("--seed", type=int, default=42)
    sim.add_argument("--rows-per-day", type=int, default=1500, help="weekday volume")
    sim.add_argument("--drift-from", default=None, help="covariate shift on and after this day")
    sim.add_argument(
        "--bad-day",
        action="append",
        default=[],
        metavar="DAY=KIND",
        help="make a day's batch bad: missing_column, wrong_type, nulls, out_of_range, duplicates, empty_file",
    )
    sim.add_argument("--label-delay-days", type=int, default=0)
    sim.add_argument("--traffic", action="store_true", help="also send each day's rows to the endpoint")
    sim.add_argument("--endpoint", default=None, help="endpoint URL (default: the stack's)")
    sim.set_defaults(handler=_simulate)


# --------------------------------------------------------------------------------------------------
# ct ledger
# --------------------------------------------------------------------------------------------------


def _ledger(args: argparse.Namespace) -> int:
    from continuous_training.lake import Lake
    from continuous_training.model import ledger
    from continuous_training.model.registry import model_name
    from continuous_training.settings import load_settings

    name = model_name(args.model)
    entries = ledger.read_ledger(Lake(load_settings().lake), name)
    entries = list(reversed(entries))[: args.limit] if args.limit else list(reversed(entries))
    if args.json:
        print(json.dumps(entries, indent=2, sort_keys=True))
        return 0
    if not entries:
        print(f"The ledger of {name} is empty: the champion alias has not been moved by the pipeline.")
        return 0
    for line in ledger_lines(entries):
        print(line)
    return 0


def ledger_lines(entries: list[dict[str, Any]]) -> list[str]:
    """A table of ledger records, newest first: when, kind, from -> to, outcome, who, why."""

    def who(actor: dict[str, Any]) -> str:
        run = actor.get("dag_run_id")
        where = f"{actor.get('dag_id') or '?'}/{run}" if run else "outside a DAG run"
        return f"{where} ({actor['user']})" if actor.get("user") else where

    def version(value: str | None) -> str:
        return f"v{value}" if value else "none"

    rows = [("WHEN (UTC)", "KIND", "MOVE", "OUTCOME", "BY", "WHY")]
    for entry in entries:
        rows.append(
            (
                entry["at"][:19].replace("T", " "),
                entry["kind"],
                f"{version(entry['from_version'])} -> {version(entry['to_version'])}",
                entry["outcome"],
                who(entry.get("actor") or {}),
                entry.get("reason") or "",
            )
        )
    # Every column but the last (the reason) padded to its widest cell.
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]


def add_ledger_command(subparsers: Subparsers) -> None:
    """Wire ``ct ledger``."""
    parser = subparsers.add_parser(
        "ledger",
        help="the deployment ledger: every move of the champion alias, newest first",
        description="Every move of the registered model's champion alias the pipeline made (deploy, "
        "rollback, automatic rollback, blocked), newest first: when, from and to which version, the "
        "outcome, who or what moved it and why. Read from $CT_LAKE/registry/<model>/ledger/.",
    )
    parser.add_argument("--model", default=None, help="registered model (default: model.name of policy.yaml)")
    parser.add_argument("--limit", type=int, default=20, help="newest records to show (0: all; default 20)")
    parser.add_argument("--json", action="store_true", help="the records as JSON, with gate and detail")
    parser.set_defaults(handler=_ledger)


# --------------------------------------------------------------------------------------------------
# ct compose init | bootstrap | provision | health
# --------------------------------------------------------------------------------------------------


def _compose_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from continuous_training.ops import compose

    if args.example:
        path = Path(args.path or compose.EXAMPLE_FILE).expanduser().resolve()
        path.write_text(compose.render_env())
        print(f"Wrote {path} (no secret in it).")
        return 0
    path = compose.write_env(Path(args.path or compose.ENV_FILE), force=args.force)
    print(f"Wrote {path} (mode 0600): every secret of docker-compose.yml, generated; never commit it.")
    print("Next: `docker compose build && docker compose up -d`; the Airflow UI's login is admin with")
    print(f"AIRFLOW_ADMIN_PASSWORD from {path.name}.")
    return 0


def _compose_bootstrap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from continuous_training.ops import compose
    from continuous_training.settings import load_settings

    compose.bootstrap(load_settings(), root=Path(args.deliver_to), databases=not args.files_only)
    print("compose init: secrets delivered, databases provisioned, Airflow's database migrated.")
    return 0


def _compose_provision(args: argparse.Namespace) -> int:
    from continuous_training.ops import compose
    from continuous_training.settings import load_settings

    found = compose.provision(load_settings())
    print(f"compose provision: training pool ready; MLflow accounts ready on model {found['model_name']}.")
    return 0


def _compose_health(args: argparse.Namespace) -> int:
    from continuous_training.ops import compose
    from continuous_training.settings import load_settings

    healthy, detail = compose.container_health(load_settings(), args.kind)
    print(f"{args.kind}: {'healthy' if healthy else 'UNHEALTHY'} ({detail})")
    return 0 if healthy else 1


def add_compose_command(subparsers: Subparsers) -> None:
    """Wire ``ct compose init|bootstrap|provision|health`` (docker-compose.yml's .env and its jobs)."""
    from continuous_training.ops.compose import DELIVERY_ROOT, HEALTH_KINDS

    compose = subparsers.add_parser(
        "compose",
        help="docker-compose.yml: write its .env, and what its containers run",
        description="The cluster deployment as containers (docker-compose.yml). `init` writes .env on the "
        "host; `bootstrap`, `provision` and `health` run inside the containers.",
    )
    actions = compose.add_subparsers(
        dest="action", required=True, metavar="{init,bootstrap,provision,health}"
    )
    init = actions.add_parser("init", help="write .env with generated secrets (mode 0600)")
    init.add_argument(
        "--path", default=None, help="where to write it (default: .env beside docker-compose.yml)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing .env (new secrets)")
    init.add_argument(
        "--example", action="store_true", help="write .env.example instead (every key, no secret)"
    )
    init.set_defaults(handler=_compose_init)
    boot = actions.add_parser(
        "bootstrap", help="(the init service) secrets files, volumes, databases, airflow db migrate"
    )
    boot.add_argument(
        "--deliver-to", default=str(DELIVERY_ROOT), help="where the delivery volumes are mounted"
    )
    boot.add_argument("--files-only", action="store_true", help="write and deliver the files only")
    boot.set_defaults(handler=_compose_bootstrap)
    actions.add_parser(
        "provision", help="(the provision service) the training pool, MLflow's accounts and grants"
    ).set_defaults(handler=_compose_provision)
    health = actions.add_parser("health", help="(health checks) this container's process answers")
    health.add_argument("kind", choices=HEALTH_KINDS)
    health.set_defaults(handler=_compose_health)


# --------------------------------------------------------------------------------------------------


#: The wiring functions, in the order their commands appear in `ct --help`.
COMMANDS: list[Callable[[Subparsers], None]] = [
    add_demo_command,
    add_stack_command,
    add_simulate_command,
    add_ledger_command,
    add_compose_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``ct`` argument parser with every command of :data:`COMMANDS`.

    Returns:
        The parser; each leaf sets ``handler``.
    """
    parser = argparse.ArgumentParser(
        prog="ct", description="Continuous training on Airflow, MLflow, Great Expectations and Evidently."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ct``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0 on success, 1 on a :class:`~continuous_training.ops.stack.StackError` or a
        configuration error (message on stderr).
    """
    from continuous_training.config import ConfigError
    from continuous_training.ops.demo import DemoError
    from continuous_training.ops.stack import StackError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # One line per HTTP call drowns what the commands print themselves.
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return int(args.handler(args) or 0)
    except (StackError, ConfigError, DemoError, TimeoutError) as exc:
        print(f"ct: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
