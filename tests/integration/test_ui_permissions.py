"""Which page needs read access to which DAG, and what an unauthorised caller gets.

The simple auth manager the stack runs gives every role read access to every DAG, so a caller who may
read one DAG and not another needs an auth manager that restricts per DAG, as FAB's or Keycloak's do.
This test installs such a one: :class:`PerDagAuthManager` answers ``is_authorized_dag`` from a table
of which user may read which DAG and reads the user's name from the token. Everything else is real:
the pages' app, Airflow's own security dependencies (``requires_access_dag``) and its metadata DB.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

#: Who may read which DAG (every other DAG: no access).
READS = {
    "ingest-reader": {"ingest"},
    "monitor-reader": {"monitor"},
    "everything": {"ingest", "train", "monitor"},
}


class PerDagAuthManager:
    """The two calls the pages' checks make of an auth manager, restricted per DAG."""

    async def get_user_from_token(self, token: str):
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        if token not in READS:
            from jwt import InvalidTokenError

            raise InvalidTokenError("unknown token")
        return SimpleAuthManagerUser(username=token, role="viewer")

    def is_authorized_dag(self, *, method, access_entity=None, details=None, user) -> bool:
        return method == "GET" and details is not None and details.id in READS[user.get_name()]


@pytest.fixture
def client(airflow_db, mlflow_server, monkeypatch):
    from airflow.api_fastapi.core_api import security

    from continuous_training.ui.app import create_app

    monkeypatch.setattr(security, "get_auth_manager", lambda: PerDagAuthManager())
    return TestClient(create_app(), raise_server_exceptions=False)


def _get(client, path: str, user: str) -> int:
    return client.get(
        path, headers={"Authorization": f"Bearer {user}", "Accept": "application/json"}
    ).status_code


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/", {"everything"}),  # the overview shows all three DAGs' results
        ("/models", {"everything"}),
        ("/drift", {"monitor-reader", "everything"}),
        ("/drift/some-run", {"monitor-reader", "everything"}),
        ("/quarantine", {"ingest-reader", "everything"}),
    ],
)
def test_each_page_needs_read_access_to_the_dags_it_shows(client, path, allowed):
    for user in READS:
        status = _get(client, path, user)
        if user in allowed:
            assert status in (200, 404), (path, user, status)  # 404: no such run, but allowed to ask
        else:
            assert status == 403, (path, user, status)


def test_without_a_known_token_the_pages_answer_403_and_without_any_401(client):
    assert _get(client, "/drift", "forged") == 403
    assert client.get("/drift", headers={"Accept": "application/json"}).status_code == 401
