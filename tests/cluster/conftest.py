"""Fixtures of the load tests: a whole stack of its own, started and stopped with the ``ct`` command.

``embedded_stack`` runs ``ct stack up`` under a CT_HOME of its own (a temp folder, not the session's)
on free loopback ports, yields a :class:`~test_concurrent_triggers.StackHandle`, and at the end runs
``ct stack down`` and asserts that no process of that CT_HOME is still running. The folder is removed
when every test passed (kept with ``CT_KEEP_TEST_HOME=1`` or after a failure, for a post-mortem).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import isolated_stack_env, processes_of_home

# The cluster (`ct stack up --cluster`), defined once in stacks.py.
from stacks import cluster_stack, run_ct  # noqa: F401

from continuous_training.settings import load_settings

UP_TIMEOUT_S = 900
DOWN_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def embedded_stack(request: pytest.FixtureRequest) -> Iterator[object]:
    from test_concurrent_triggers import StackHandle

    from continuous_training.ops.stack import airflow_password, stack_status

    home = Path(tempfile.mkdtemp(prefix="ct-cluster-test-")).resolve()
    env = isolated_stack_env(home)
    settings = load_settings(env)
    log = home / "ct-commands.log"
    started = time.monotonic()
    try:
        run_ct(["stack", "up"], env, log, UP_TIMEOUT_S)
        up_s = time.monotonic() - started
        handle = StackHandle(
            base_url=settings.airflow_url,
            admin_password=airflow_password(settings),
            settings=settings,
            components=lambda: stack_status(settings),
        )
        handle.figures["stack_up_s"] = round(up_s, 1)
        yield handle
    finally:
        down = time.monotonic()
        run_ct(["stack", "down"], env, log, DOWN_TIMEOUT_S)
        print(f"\nembedded stack {home}: `ct stack down` took {time.monotonic() - down:.1f} s")
        left = processes_of_home(home)
        assert not left, f"still running after `ct stack down` ({home}): {left}"
        if request.session.testsfailed == 0 and not os.environ.get("CT_KEEP_TEST_HOME"):
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"embedded stack state kept in {home}")
