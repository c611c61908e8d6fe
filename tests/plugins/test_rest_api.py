"""The REST client against a stand-in api-server: the token, the calls the UI makes, the errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from flywheel_airflow.rest_api import AirflowApi, ApiError

from tests.json_http import JsonHandler


class StandIn(JsonHandler):
    """``/auth/token`` for ``alice``; any other request is recorded and answered ``{}``, or 403
    for ``bob``."""

    calls: ClassVar[list[tuple[str, str, str, Any]]] = []

    def _handle(self) -> None:
        raw = self.body()
        body = json.loads(raw) if raw else None
        if self.path == "/auth/token":
            self.reply(200, {"access_token": f"token-of-{body['username']}"})
            return
        auth = self.headers.get("Authorization", "")
        self.calls.append((self.command, self.path, auth, body))
        self.reply(403 if auth.endswith("bob") else 200, {"detail": "no"} if "bob" in auth else {})

    do_GET = do_POST = do_PATCH = _handle


@pytest.fixture
def base_url() -> Iterator[str]:
    StandIn.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_note_is_patched_as_the_user_with_the_run_id_quoted(base_url: str) -> None:
    api = AirflowApi(base_url, {"alice": "secret"})
    api.set_note("training", "manual__2026-03-01T00:00:00+00:00", "x" * 1200, "alice")
    [(method, path, auth, body)] = StandIn.calls
    assert method == "PATCH" and auth == "Bearer token-of-alice"
    assert path == (
        "/api/v2/dags/training/dagRuns/manual__2026-03-01T00%3A00%3A00%2B00%3A00?update_mask=note"
    )
    assert body == {"note": "x" * 1000}


def test_an_http_error_is_an_api_error_with_its_status(base_url: str) -> None:
    api = AirflowApi(base_url, {"bob": "secret"})
    detail = {"task_instance": {"dag_id": "training", "dag_run_id": "r", "task_id": "a"}}
    with pytest.raises(ApiError) as refused:
        api.answer(detail, "bob", "Approve")
    assert refused.value.status == 403
    [(method, path, _, body)] = StandIn.calls
    assert (method, path) == (
        "PATCH",
        "/api/v2/dags/training/dagRuns/r/taskInstances/a/-1/hitlDetails",
    )
    assert body == {"chosen_options": ["Approve"], "params_input": {}}
