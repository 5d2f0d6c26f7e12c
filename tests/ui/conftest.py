"""The UI under test: a whole embedded stack of its own with the plugin loaded, after ``ct demo``.

``ui_stack`` (session) runs ``ct demo`` under a temporary CT_HOME on free loopback ports: it starts the
stack (Airflow's API server loads ``plugins/``) and plays the twelve days, so the pages have real data
to show (a champion retrained after drift, two drift reports, one quarantined batch, gate verdicts).
At the end ``ct stack down`` runs and no process of that CT_HOME may be left. Screenshots and the
stack's state stay in the folder (printed) for a look after the run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from browsing import TIMEOUT_MS, login
from services import isolated_stack_env, processes_of_home, run_ct

from continuous_training.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 1800
DOWN_TIMEOUT_S = 300


@dataclass
class UiStack:
    home: Path
    env: dict[str, str]
    settings: Settings
    log: Path
    shots: Path
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.settings.airflow_url

    def password(self, user: str) -> str:
        from continuous_training.ops.stack.secrets import airflow_password

        return airflow_password(self.settings, user)

    def token(self, user: str) -> str:
        resp = httpx.post(
            f"{self.base}/auth/token", json={"username": user, "password": self.password(user)}, timeout=60
        )
        resp.raise_for_status()
        return resp.json()["access_token"]

    def client(self, user: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=60, follow_redirects=False)

    def summary(self) -> dict[str, Any]:
        return json.loads((self.settings.demo_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def ui_stack() -> Iterator[UiStack]:
    home = Path(tempfile.mkdtemp(prefix="ct-ui-")).resolve()
    # A config folder of its own: the approval tests switch gate.require_approval on in its policy.
    config = home / "config"
    shutil.copytree(REPO / "include" / "config", config)
    env = isolated_stack_env(home, CT_CONFIG_DIR=str(config))
    stack = UiStack(
        home=home,
        env=env,
        settings=load_settings(env),
        log=home / "ct-commands.log",
        shots=home / "screenshots",
    )
    stack.shots.mkdir()
    started = time.monotonic()
    try:
        run_ct(["demo"], env, stack.log, DEMO_TIMEOUT_S)
        stack.figures["demo_s"] = round(time.monotonic() - started, 1)
        yield stack
    finally:
        run_ct(["stack", "down"], env, stack.log, DOWN_TIMEOUT_S)
        print(f"\nUI stack {home}: screenshots in {stack.shots}; figures {stack.figures}")
        left = processes_of_home(home)
        assert not left, f"still running after `ct stack down` ({home}): {left}"


# ---- the browser ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("the UI tests need Debian's chromium (`apt-get install -y chromium`)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_stack) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    login(page, ui_stack, "admin")
    yield page
    context.close()
