"""What the browser tests do on a page: log in, and keep a screenshot for a person to look at."""

from __future__ import annotations

#: Playwright's wait for anything: a first render on 2 busy cores can take more than 30 s.
TIMEOUT_MS = 90_000


def login(page, stack, user: str) -> None:
    page.goto(f"{stack.base}/auth/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", stack.password(user))
    page.press("input[name=password]", "Enter")
    # The login page posts the form, stores the token and then navigates: wait for that navigation.
    page.wait_for_url(lambda url: "/auth/login" not in url)
    page.wait_for_load_state("networkidle")


def shot(page, stack, name: str) -> None:
    page.screenshot(path=str(stack.shots / f"{name}.png"), full_page=True)
