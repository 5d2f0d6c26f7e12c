"""Who may see the pages: Airflow's own session and permission checks, applied to the plugin's app.

Airflow mounts a plugin's FastAPI app with its own route table and authenticates none of it, so every
page here declares what it needs, with the dependencies Airflow's REST API uses itself
(``airflow.api_fastapi.core_api.security``): the caller's JWT (the ``Authorization: Bearer`` header,
else the UI's ``_token`` cookie), then the auth manager's ``is_authorized_dag`` for the DAG whose data
the page shows (read), or for triggering its runs (the replay button).

Anonymous callers get 401; a browser asking for a page is sent to Airflow's login page instead, and
comes back after it (:func:`login_redirect`). A caller whose token is invalid, or whose role lacks the
access, gets 403.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

#: The header a page's script sends with a write (the replay button): a cross-site form cannot.
ACTION_HEADER = "X-CT-Action"


def caller_token(request: Request) -> str:
    """The caller's own JWT (the Bearer header, else the UI's ``_token`` cookie), to act as them."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:]
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN, "")


def can_read(dag_id: str) -> Any:
    """A route dependency: the caller may read DAG ``dag_id`` (its runs, their results)."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", param_dag_id=dag_id))


def can_trigger(dag_id: str) -> Any:
    """A route dependency: the caller may create runs of DAG ``dag_id``."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=dag_id))


def current_user() -> Any:
    """A route dependency giving the authenticated user (``get_name()``)."""
    from airflow.api_fastapi.core_api.security import get_user

    return Depends(get_user)


def wants_html(request: Request) -> bool:
    """A browser navigating (``Accept: text/html``), not a script asking for data."""
    return request.method == "GET" and "text/html" in request.headers.get("accept", "")


def login_redirect(request: Request) -> RedirectResponse:
    """Airflow's login page, with the page asked for as where to come back to."""
    from airflow.api_fastapi.app import get_auth_manager

    return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
