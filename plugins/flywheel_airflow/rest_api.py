"""Airflow's REST API (``/api/v2``), called as the UI calls it: a JWT from ``/auth/token``,
then JSON requests with it.

The gates write a DAG run's note through it (tasks have no database access in Airflow 3 and the
Task SDK cannot write notes); the demo, the tests and the orchestration benchmark answer the
approval through it, so an answer is recorded as the user's, exactly as the *Required Actions*
page records it. Standard library only: no Airflow import, so any environment can use it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

# The Airflow Connection that tells tasks where the api-server is and whom to log in as.
API_CONN_ID = "flywheel_airflow_api"


class ApiError(RuntimeError):
    """The api-server answered with an HTTP error (``status``: 403 for a refused approver)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


def api_token(base_url: str, username: str, password: str) -> str:
    """A JWT from the API server's ``/auth/token`` (simple auth manager or any that accepts it)."""
    request = urllib.request.Request(
        f"{base_url}/auth/token",
        method="POST",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["access_token"])


def quoted(value: str) -> str:
    """A path segment: run ids hold ``:`` and ``+``."""
    return urllib.parse.quote(value, safe="")


class AirflowApi:
    """The few REST calls of the UI that Flywheel needs, each made as a named user."""

    def __init__(self, base_url: str, passwords: Mapping[str, str], timeout: float = 30) -> None:
        self.base_url = base_url
        self.passwords = dict(passwords)
        self.timeout = timeout
        self._tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = api_token(self.base_url, user, self.passwords[user])
        return self._tokens[user]

    def call(self, method: str, path: str, user: str, body: Any = None) -> Any:
        """``method /api/v2{path}`` as ``user``; the decoded JSON answer, or ApiError."""
        request = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.token(user)}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")[:500]) from exc

    def set_note(self, dag_id: str, run_id: str, note: str, user: str) -> None:
        """The DAG run's note, as the UI's note editor sets it (at most 1000 characters)."""
        path = f"/dags/{quoted(dag_id)}/dagRuns/{quoted(run_id)}?update_mask=note"
        self.call("PATCH", path, user, {"note": note[:1000]})

    def pending_approvals(self, dag_id: str, user: str) -> list[dict[str, Any]]:
        found = self.call(
            "GET", f"/dags/{dag_id}/dagRuns/~/hitlDetails?response_received=false", user
        )
        return [d for d in found["hitl_details"] if not d.get("response_received")]

    def wait_for_approval(
        self,
        dag_id: str,
        user: str,
        *,
        timeout: float,
        alive: Callable[[], bool] | None = None,
        settle: float = 5.0,
    ) -> dict[str, Any]:
        """The first approval request of ``dag_id`` whose task has waited ``settle`` seconds.

        Polls every 0.5 s; ``alive()`` False stops early. Two races in Airflow 3 make an
        instant answer harmful, so the answer waits until the task has sat parked a while:
        the request exists a moment before its task parks in ``awaiting_input`` (an answer in
        between is lost on SQLite and the run waits forever), and the scheduler learns that
        the parking process ended a loop later (an answer before that re-queues the task,
        the late "success" event then marks it up for retry, and the next try asks again).
        """
        deadline = time.monotonic() + timeout
        parked_since: dict[tuple[str, int], float] = {}
        while time.monotonic() < deadline:
            if alive is not None and not alive():
                raise RuntimeError("the DAG run ended before asking for approval")
            now = time.monotonic()
            for detail in self.pending_approvals(dag_id, user):
                ti = detail.get("task_instance") or {}
                if ti.get("state") != "awaiting_input":
                    continue
                key = (str(ti.get("id")), int(ti.get("try_number") or 0))
                if now - parked_since.setdefault(key, now) >= settle:
                    return detail
            time.sleep(0.5)
        raise TimeoutError(f"no approval request from {dag_id} within {timeout:.0f} s")

    def answer(self, detail: dict[str, Any], user: str, option: str) -> dict[str, Any]:
        """``PATCH .../hitlDetails`` as ``user``: the UI's Approve / Reject buttons."""
        ti = detail["task_instance"]
        path = (
            f"/dags/{ti['dag_id']}/dagRuns/{quoted(ti['dag_run_id'])}/taskInstances/"
            f"{ti['task_id']}/{ti.get('map_index', -1)}/hitlDetails"
        )
        result: dict[str, Any] = self.call(
            "PATCH", path, user, {"chosen_options": [option], "params_input": {}}
        )
        return result

    def task_states(self, dag_id: str, run_id: str, user: str) -> dict[str, str]:
        found = self.call("GET", f"/dags/{dag_id}/dagRuns/{quoted(run_id)}/taskInstances", user)
        return {t["task_id"]: str(t["state"]) for t in found["task_instances"]}

    def dag_run(self, dag_id: str, run_id: str, user: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call("GET", f"/dags/{dag_id}/dagRuns/{quoted(run_id)}", user)
        return found
