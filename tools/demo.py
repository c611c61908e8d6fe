"""The demo: run the training DAG end to end on this machine and answer its approval over REST.

``.venvs/orchestrator/bin/python -m tools.demo`` (what ``make demo`` calls):

1. an Airflow home under the state folder (``.flywheel/airflow``: SQLite, no examples, this
   repository's ``dags/`` and ``plugins/``, the simple auth manager with a named approver);
2. ``airflow db migrate``; the dataset materialized (``python -m ml_tasks.dataset materialize``
   with the steps interpreter); a deploy an earlier run approved but did not finish is
   finished (``python -m ml_tasks.deploy finish``), so a re-run picks up where it stopped;
3. ``airflow api-server`` on a free loopback port, then ``airflow dags test training`` (through
   :mod:`tools.airflow_cli`: the same command, the collector tuned for a short process);
4. when the run parks at ``await_approval``, the approver answers through the REST API, exactly
   the call the UI's *Required Actions* page makes (``PATCH .../hitlDetails``), so the answer is
   recorded as theirs; the gate itself is never skipped, marked or shortened;
5. every task's state is checked, the api-server stopped, and the run's audit trail printed.

A person approves the same way in the UI: start ``airflow api-server``, ``airflow scheduler``
and ``airflow dag-processor`` with the same ``AIRFLOW_HOME`` (or ``airflow standalone``), log in
as an approver, open *Browse → Required Actions*.

The helpers (:class:`AirflowApi`, :func:`api_server`, :func:`airflow_env`) are shared with the
tests and the orchestration benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel_airflow.gates import API_CONN_ID
from flywheel_airflow.invocation import steps_python

from tools.local_servers import free_port, running_server, stop_process_group

CODE_ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "training"
APPROVER = "demo-approver"
APPROVER_NAME = "Demo Approver"
SIMPLE_AUTH_MANAGER = (
    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
)


def airflow_env(
    airflow_home: Path,
    *,
    users: Mapping[str, str],
    approvers: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every Airflow command here: one home, one SQLite DB, few processes.

    ``users`` maps user names to simple-auth-manager roles; their passwords are generated into
    ``<home>/simple_auth_manager_passwords.json.generated`` (kept across runs).
    """
    env = dict(base if base is not None else os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(CODE_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(CODE_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                f"{u}:{r}" for u, r in users.items()
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__API_AUTH__JWT_SECRET": env.get("AIRFLOW__API_AUTH__JWT_SECRET")
            or secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": env.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO"),
            "FLYWHEEL_APPROVERS": approvers,
            "FLYWHEEL_BACKEND": "local",
            "FLYWHEEL_STEPS_PYTHON": env.get("FLYWHEEL_STEPS_PYTHON") or steps_python(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def dags_test_command(*args: str) -> list[str]:
    """``airflow dags test training [args]``, parsing only the training DAG's file."""
    return [
        sys.executable,
        "-m",
        "tools.airflow_cli",
        "dags",
        "test",
        DAG_ID,
        "--dagfile-path",
        str(CODE_ROOT / "dags" / f"{DAG_ID}.py"),
        *args,
    ]


def ensure_passwords(airflow_home: Path, users: Mapping[str, str]) -> dict[str, str]:
    """Passwords for the simple auth manager's users (generated once, kept in the home)."""
    path = airflow_home / "simple_auth_manager_passwords.json.generated"
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for user in users:
        known.setdefault(user, secrets.token_urlsafe(12))
    airflow_home.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known) + "\n")
    path.chmod(0o600)
    return known


def airflow_cli(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        env=dict(env),
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        raise RuntimeError(
            f"airflow {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
    return done


@contextmanager
def api_server(env: Mapping[str, str], log_path: Path) -> Iterator[str]:
    """``airflow api-server`` on a free port of 127.0.0.1; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "AIRFLOW__API__BASE_URL": url, "AIRFLOW__API__PORT": str(port)}
    command = [str(Path(sys.executable).parent / "airflow"), "api-server"]
    with running_server(
        [*command, "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
        health_url=f"{url}/api/v2/monitor/health",
        log_path=log_path,
        env=env,
    ):
        yield url


def api_connection(url: str, login: str, password: str) -> dict[str, str]:
    """The environment variable that gives tasks the Airflow Connection to this api-server."""
    connection = {
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": int(url.rsplit(":", 1)[1]),
        "schema": "http",
        "login": login,
        "password": password,
    }
    return {f"AIRFLOW_CONN_{API_CONN_ID.upper()}": json.dumps(connection)}


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class AirflowApi:
    """The few REST calls the UI makes that the demo and the tests need."""

    def __init__(self, base_url: str, passwords: Mapping[str, str]) -> None:
        self.base_url = base_url
        self.passwords = dict(passwords)
        self._tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self._tokens:
            from flywheel_airflow.gates import api_token

            self._tokens[user] = api_token(self.base_url, user, self.passwords[user])
        return self._tokens[user]

    def call(self, method: str, path: str, user: str, body: Any = None) -> Any:
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
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")[:500]) from exc

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
        alive: Any = None,
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
        run_id = urllib.parse.quote(ti["dag_run_id"], safe="")
        path = (
            f"/dags/{ti['dag_id']}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/"
            f"{ti.get('map_index', -1)}/hitlDetails"
        )
        result: dict[str, Any] = self.call(
            "PATCH", path, user, {"chosen_options": [option], "params_input": {}}
        )
        return result

    def task_states(self, dag_id: str, run_id: str, user: str) -> dict[str, str]:
        found = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances",
            user,
        )
        return {t["task_id"]: str(t["state"]) for t in found["task_instances"]}

    def dag_run(self, dag_id: str, run_id: str, user: str) -> dict[str, Any]:
        found: dict[str, Any] = self.call(
            "GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}", user
        )
        return found


FINISH_COMMAND = ".venvs/steps/bin/python -m ml_tasks.deploy finish"


def finish_undone_deploys(env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Deploy what an earlier approved run left undone; returns the promote results.

    Without this a failed deploy is never retried: the approved version stays ``challenger``,
    and the next run's model, compared with it, is rarely better, so nothing asks again.
    """
    done = subprocess.run(
        [env["FLYWHEEL_STEPS_PYTHON"], "-m", "ml_tasks.deploy", "finish", "--who", "demo"],
        env=dict(env),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"finishing an approved deploy failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    finished: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])["finished"]
    return finished


def run_demo(*, answer: str = "Approve", conf: dict[str, Any] | None = None) -> int:
    from ml_tasks.core.settings import load_settings

    settings = load_settings()
    airflow_home = settings.home / "airflow"
    users = {"admin": "admin", APPROVER: "user"}
    passwords = ensure_passwords(airflow_home, users)
    env = airflow_env(airflow_home, users=users, approvers=f"{APPROVER}:{APPROVER_NAME}")
    print(f"Airflow home: {airflow_home}", flush=True)
    airflow_cli(env, "db", "migrate")
    done = subprocess.run(
        [env["FLYWHEEL_STEPS_PYTHON"], "-m", "ml_tasks.dataset", "materialize"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    print(f"dataset: {json.loads(done.stdout)}", flush=True)
    try:
        finished = finish_undone_deploys(env)
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    for item in finished:
        print(
            f"finished the deploy of v{item['model_version']} approved by {item['approved_by']} "
            "in an earlier run (its deploy had not finished): it is now champion",
            flush=True,
        )
    with api_server(env, airflow_home / "logs" / "api-server.log") as url:
        # The note the gates write (register-if-better's reason) goes through the same API.
        env.update(api_connection(url, APPROVER, passwords[APPROVER]))
        api = AirflowApi(url, passwords)
        print(f"api-server: {url} (log in as {APPROVER} to see Required Actions)", flush=True)
        test = subprocess.Popen(
            dags_test_command(*(["-c", json.dumps(conf)] if conf else [])),
            env=env,
            start_new_session=True,
        )
        try:
            try:
                detail = api.wait_for_approval(
                    DAG_ID, APPROVER, timeout=3600, alive=lambda: test.poll() is None
                )
            except RuntimeError:
                detail = None  # validate skipped registration: no approval to give
            if detail is not None:
                print(
                    f"\n>>> {APPROVER} answers {answer!r} to: {detail['subject']}\n"
                    f"{detail.get('body')}\n",
                    flush=True,
                )
                api.answer(detail, APPROVER, answer)
            code = test.wait()
        finally:
            stop_process_group(test)
        runs = api.call("GET", f"/dags/{DAG_ID}/dagRuns?order_by=-start_date&limit=1", "admin")
        run = runs["dag_runs"][0]
        states = api.task_states(DAG_ID, run["dag_run_id"], "admin")
    print(f"\nrun {run['dag_run_id']}: {run['state']} (note: {run.get('note')})")
    for task_id, state in states.items():
        print(f"  {task_id:24s} {state}")
    bad = {t: s for t, s in states.items() if s not in ("success", "skipped")}
    print("\naudit trail (python -m ml_tasks.audit --run-id ...):", flush=True)
    subprocess.run(
        [env["FLYWHEEL_STEPS_PYTHON"], "-m", "ml_tasks.audit", "--run-id", run["dag_run_id"]],
        env=env,
    )
    if code != 0 or run["state"] != "success" or bad:
        print(
            f"demo failed: airflow dags test exited {code}; tasks not green: {bad}", file=sys.stderr
        )
        if bad.get("deploy") is not None:
            print(
                "the approved version stays challenger until it is deployed: `make demo` again "
                f"finishes it first, or run `{FINISH_COMMAND}`",
                file=sys.stderr,
            )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--answer",
        choices=["Approve", "Reject"],
        default="Approve",
        help="what the demo approver answers (default Approve)",
    )
    parser.add_argument(
        "--conf", type=json.loads, help="DAG params as JSON, e.g. '{\"epochs\": 5}'"
    )
    args = parser.parse_args(argv)
    return run_demo(answer=args.answer, conf=args.conf)


if __name__ == "__main__":
    raise SystemExit(main())
