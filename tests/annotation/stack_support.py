"""The local stack for tests: a handle on one started by ``python -m tools.stack up``.

The ``stack`` fixture (``conftest.py``) starts one per session, in a throwaway
``FLYWHEEL_HOME`` on free ports (the same ``FLYWHEEL_STACK_*_PORT`` variables a user sets),
against a throwaway copy of the repository.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from annotation_support import REPO
from repo_copy import make_repo_copy
from servers import s3_client, steps_python

from tools.local_servers import free_port
from tools.local_servers import wait_until as wait_for
from tools.stack import PORTS

# Every service's port, moved to a free one (a user's own stack may hold the defaults).
PORT_VARIABLES = [variable for variable, _ in PORTS.values()]


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    printed: str  # what `up` printed

    def run(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run(
            [steps_python(), "-m", "tools.stack", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        assert done.returncode == 0, f"stack {args[0]} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    @property
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.home / "stack" / "state.json").read_text())
        return state

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.state['airflow']['port']}"

    def passwords(self) -> dict[str, str]:
        path = self.home / "airflow" / "simple_auth_manager_passwords.json.generated"
        passwords: dict[str, str] = json.loads(path.read_text())
        return passwords

    def api(self) -> Any:
        from flywheel_airflow.rest_api import AirflowApi

        return AirflowApi(self.airflow_url, self.passwords())

    def shell_env(self) -> dict[str, str]:
        """The environment ``eval "$(python -m tools.stack env)"`` gives a shell."""
        out = self.run("env")
        env = dict(self.env)
        import shlex

        for line in out.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
        return env

    def with_dataset(self) -> None:
        """The dataset in the stack's DVC remote (its S3), as on a fresh clone, and the
        training DAG parsed: what a person has before the first training run."""
        subprocess.run(
            [steps_python(), "-m", "ml_tasks.dataset", "materialize"],
            env=self.shell_env(),
            check=True,
            capture_output=True,
            timeout=600,
        )
        api = self.api()
        wait_for(lambda: dag_parsed(api, "training"), 180, "the training DAG parsed")

    def s3(self) -> Any:
        return s3_client(self.state["s3"], "flywheel", "flywheel-local")

    def approval_request(self, dag_id: str, user: str, *, timeout: float) -> dict[str, Any]:
        """The first approval request ``user`` may answer, once the scheduler has seen its task
        park.

        An answer given before the scheduler processed the parking process's exit re-queues the
        task, the late exit then reads as "killed externally", and the retry asks again (an
        Airflow 3.3 race). On a busy CI that took longer than the 5 s ``wait_for_approval``
        waits, so the stack tests read the scheduler's own log line for it instead.
        """
        detail: dict[str, Any] = self.api().wait_for_approval(dag_id, user, timeout=timeout)
        ti = detail["task_instance"]
        wait_for(
            lambda: self.scheduler_saw_parked(ti), 300, "the scheduler saw the approval task park"
        )
        return detail

    def scheduler_saw_parked(self, ti: dict[str, Any]) -> bool:
        log = self.home / "stack" / "airflow-scheduler.log"
        task = f"task_id={ti['task_id']}, run_id={ti['dag_run_id']}, "
        try_number = f"try_number={ti['try_number']},"
        return any(
            "TaskInstance Finished:" in line
            and task in line
            and "state=awaiting_input," in line
            and try_number in line
            for line in log.read_text(errors="replace").splitlines()
        )

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float) -> str:
        """The run's final state; on a timeout, an error that shows each task's state and try."""
        api = self.api()

        def finished() -> str | None:
            state = str(api.dag_run(dag_id, run_id, "admin")["state"])
            return state if state in ("success", "failed") else None

        try:
            return str(wait_for(finished, timeout, f"{dag_id} run {run_id} finished"))
        except TimeoutError as exc:
            found = api.call(
                "GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances", "admin"
            )
            tasks = {t["task_id"]: (t["state"], t["try_number"]) for t in found["task_instances"]}
            raise TimeoutError(f"{exc}; tasks (state, try): {tasks}") from None


def dag_parsed(api: Any, dag_id: str) -> bool:
    from flywheel_airflow.rest_api import ApiError

    try:
        api.call("GET", f"/dags/{dag_id}", "admin")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


@contextmanager
def started_stack(root: Path) -> Iterator[Stack]:
    """``up`` in a throwaway home and repository copy on free ports; ``down`` afterwards."""
    repo = make_repo_copy(root / "repo")
    # A clean environment: nothing of this pytest session's Airflow, MLflow or S3 settings.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "MLFLOW", "AWS_", "FLYWHEEL_", "LABEL_STUDIO"))
    }
    env.update(
        {
            "FLYWHEEL_HOME": str(root / "home"),
            "FLYWHEEL_REPO": str(repo),
            "FLYWHEEL_STEPS_PYTHON": steps_python(),
            **{variable: str(free_port()) for variable in PORT_VARIABLES},
        }
    )
    stack = Stack(root / "home", env, "")
    try:
        stack.printed = stack.run("up")
        yield stack
    finally:
        stack.run("down")
