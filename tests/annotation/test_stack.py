"""The local stack for real (``python -m ml_tasks.stack up``): its logins, and what it keeps.

One stack for the module, in a throwaway ``FLYWHEEL_HOME`` on free ports (the same
``FLYWHEEL_STACK_*_PORT`` variables a user sets), against a throwaway copy of the repository:

- the approver it creates answers the training DAG's approval; the non-approver gets 403;
- ``down`` then ``up``: the lake's objects, MLflow's runs, Label Studio's tasks and Airflow's
  runs are all still there, on the same ports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from annotation_support import REPO
from repo_copy import make_repo_copy
from servers import steps_python

from ml_tasks.local_servers import free_port

# starting the stack, a dataset push and a training run: minutes on 2 shared cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PORT_VARIABLES = [
    "FLYWHEEL_STACK_S3_PORT",
    "FLYWHEEL_STACK_MLFLOW_PORT",
    "FLYWHEEL_STACK_LABEL_STUDIO_PORT",
    "FLYWHEEL_STACK_AIRFLOW_PORT",
    "FLYWHEEL_STACK_MODEL_SERVICE_PORT",
]


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    printed: str  # what `up` printed

    def run(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run(
            [steps_python(), "-m", "ml_tasks.stack", *args],
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
        from flywheel_airflow.demo import AirflowApi

        return AirflowApi(self.airflow_url, self.passwords())

    def shell_env(self) -> dict[str, str]:
        """The environment ``eval "$(python -m ml_tasks.stack env)"`` gives a shell."""
        out = self.run("env")
        env = dict(self.env)
        import shlex

        for line in out.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0] if value else ""
        return env

    def s3(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.state["s3"],
            aws_access_key_id="flywheel",
            aws_secret_access_key="flywheel-local",
            region_name="us-east-1",
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
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
        stack.printed = stack.run("up", "--no-serve")
        yield stack
    finally:
        stack.run("down")


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(1)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def dag_parsed(api: Any, dag_id: str) -> bool:
    from flywheel_airflow.demo import ApiError

    try:
        api.call("GET", f"/dags/{dag_id}", "admin")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_the_approver_answers_the_approval_and_the_non_approver_is_refused(
    stack: Stack,
) -> None:
    from flywheel_airflow.demo import ApiError

    passwords = stack.passwords()
    for user in ("admin", "approver", "non-approver"):
        assert f"{user} " in stack.printed and passwords[user] in stack.printed
    # The dataset in the stack's DVC remote (its S3), as on a fresh clone.
    env = stack.shell_env()
    subprocess.run(
        [steps_python(), "-m", "ml_tasks.dataset", "materialize"],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    api = stack.api()
    wait_for(lambda: dag_parsed(api, "training"), 180, "the training DAG parsed")
    api.call("PATCH", "/dags/training", "admin", {"is_paused": False})
    api.call(
        "POST",
        "/dags/training/dagRuns",
        "admin",
        {"logical_date": None, "conf": {"epochs": 4, "force_register": True}},
    )
    # The first run to reach the gate (this one, or a nightly slot the scheduler started).
    detail = api.wait_for_approval("training", "approver", timeout=900)
    run_id = detail["task_instance"]["dag_run_id"]
    assert [u["id"] for u in detail["assigned_users"]] == ["approver"]

    with pytest.raises(ApiError) as refused:
        api.answer(detail, "non-approver", "Approve")
    assert refused.value.status == 403
    api.answer(detail, "approver", "Approve")

    def finished() -> str | None:
        state = str(api.dag_run("training", run_id, "admin")["state"])
        return state if state in ("success", "failed") else None

    assert wait_for(finished, 600, "the training run finished") == "success"
    states = api.task_states("training", run_id, "admin")
    assert states["deploy"] == "success", states


def test_down_then_up_keeps_everything_on_the_same_ports(stack: Stack) -> None:
    from label_studio_sdk import LabelStudio

    before = stack.state
    urls = {
        "s3": before["s3"],
        "mlflow": before["mlflow"],
        "label_studio": before["label_studio"]["url"],
        "airflow": stack.airflow_url,
    }
    # Something in each store.
    stack.s3().put_object(Bucket="flywheel", Key="kept/one.txt", Body=b"still here")
    request = urllib.request.Request(
        f"{urls['mlflow']}/api/2.0/mlflow/runs/create",
        data=json.dumps({"experiment_id": "0", "run_name": "kept"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        mlflow_run = json.loads(response.read())["run"]["info"]["run_id"]
    ls = LabelStudio(base_url=urls["label_studio"], api_key=before["label_studio"]["token"])
    project = ls.projects.create(title="kept across restarts")
    ls.projects.import_tasks(id=project.id, request=[{"data": {"text": "kept"}}])
    api = stack.api()
    wait_for(lambda: dag_parsed(api, "flywheel_ingest"), 180, "the ingest DAG parsed")
    airflow_run = api.call("POST", "/dags/flywheel_ingest/dagRuns", "admin", {"logical_date": None})

    stack.run("down")
    for url in urls.values():  # really stopped
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            assert sock.connect_ex((host, int(port))) != 0, f"{url} still answers after down"
    stack.run("up", "--no-serve")

    after = stack.state
    assert {
        "s3": after["s3"],
        "mlflow": after["mlflow"],
        "label_studio": after["label_studio"]["url"],
        "airflow": stack.airflow_url,
    } == urls
    got = stack.s3().get_object(Bucket="flywheel", Key="kept/one.txt")["Body"].read()
    assert got == b"still here"
    with urllib.request.urlopen(
        f"{urls['mlflow']}/api/2.0/mlflow/runs/get?run_id={mlflow_run}", timeout=30
    ) as response:
        assert json.loads(response.read())["run"]["info"]["run_name"] == "kept"
    ls = LabelStudio(base_url=urls["label_studio"], api_key=after["label_studio"]["token"])
    tasks = list(ls.tasks.list(project=project.id))
    assert [t.data["text"] for t in tasks] == ["kept"]
    api = stack.api()  # the same logins, new tokens
    found = api.dag_run("flywheel_ingest", airflow_run["dag_run_id"], "admin")
    assert found["dag_run_id"] == airflow_run["dag_run_id"]
