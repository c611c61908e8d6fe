"""The local backend's step process: it dies with its task, and credentials stay out of the
worker's environment.

The steps run here are a stand-in interpreter (``FLYWHEEL_STEPS_PYTHON``) that takes the same
command line as the steps environment's python (``-m ml_tasks.<step> ... --result-path P``)
and, depending on the step name, starts a grandchild and sleeps, or reports its environment.
Processes are checked by pid and by process group (a zombie counts as gone: it has exited).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.processes import group_members, running

FAKE_PYTHON = """#!{python}
import json, os, signal, subprocess, sys, time

args = sys.argv[1:]
step = args[1].removeprefix("ml_tasks.")
result = args[args.index("--result-path") + 1]
if step == "env":
    with open(result, "w") as f:
        json.dump(dict(os.environ), f)
    sys.exit(0)
stubborn = step == "stubborn"
if stubborn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([
    sys.executable, "-c",
    "import signal, time\\n"
    + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" if stubborn else "")
    + "time.sleep(600)",
])
with open(os.path.join(os.environ["FAKE_STEP_DIR"], "pids.json"), "w") as f:
    json.dump({{"step": os.getpid(), "grandchild": grandchild.pid}}, f)
print("step started", flush=True)
time.sleep(600)
"""


@pytest.fixture
def fake_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in steps interpreter; returns the folder it writes its pids to."""
    script = tmp_path / "fake-python"
    script.write_text(FAKE_PYTHON.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("FLYWHEEL_STEPS_PYTHON", str(script))
    monkeypatch.setenv("FLYWHEEL_BACKEND", "local")
    monkeypatch.setenv("FAKE_STEP_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def context() -> dict[str, Any]:
    return {"ti": mock.Mock(dag_id="d", task_id="t", try_number=1), "run_id": "r"}


def wait_for_pids(folder: Path, timeout: float = 60) -> dict[str, int]:
    path = folder / "pids.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return {k: int(v) for k, v in json.loads(path.read_text()).items()}
        time.sleep(0.05)
    raise AssertionError("the step never started")


def gone(pids: dict[str, int], timeout: float = 10) -> bool:
    """True once no step process is running, neither by pid nor in the step's group."""
    deadline = time.monotonic() + timeout
    while True:
        if not any(running(p) for p in pids.values()) and not group_members(pids["step"]):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids a failing test leaves behind, killed at teardown so no sleeper outlives the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, 9)
            else:
                os.kill(pid, 9)


@pytest.mark.parametrize("step", ["sleepy", "stubborn"])
def test_on_kill_ends_the_step_and_its_grandchild(
    fake_steps: Path, context: dict[str, Any], reaper: list[int], step: str
) -> None:
    """Clearing or failing a running task calls ``on_kill`` (from the task's SIGTERM handler,
    while ``execute`` still runs): the step and the process it started are gone, even a step
    that ignores SIGTERM (SIGKILL after the grace)."""
    from airflow.sdk.exceptions import AirflowException
    from flywheel_airflow.operators.step import StepOperator

    op = StepOperator(task_id="train", step=step)
    op.kill_grace_seconds = 1.0
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            op.execute(context)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    pids = wait_for_pids(fake_steps)
    reaper.extend(pids.values())
    assert os.getpgid(pids["step"]) == pids["step"] != os.getpgid(0)  # a group of its own
    assert os.getpgid(pids["grandchild"]) == pids["step"]
    assert running(pids["step"]) and running(pids["grandchild"])

    started = time.monotonic()
    op.on_kill()
    assert gone(pids, timeout=5), f"left running: {group_members(pids['step'])}"
    assert time.monotonic() - started < 10
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert isinstance(outcome.get("error"), AirflowException)
    assert "exited with -" in str(outcome["error"])


# Not pytest-timeout's default signal method: Airflow's timeout also uses SIGALRM.
@pytest.mark.timeout(120, method="thread")
def test_execution_timeout_ends_the_step_and_its_grandchild(
    fake_steps: Path, context: dict[str, Any], reaper: list[int]
) -> None:
    """A task's ``execution_timeout``, through the Task SDK's own code path (SIGALRM raises
    ``AirflowTaskTimeout`` inside ``execute``, then ``on_kill``): nothing of the step is left."""
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.task_runner import _run_execute_callable
    from flywheel_airflow.operators.step import StepOperator

    op = StepOperator(task_id="train", step="sleepy", execution_timeout=timedelta(seconds=2))
    pids: dict[str, int] = {}

    def watch() -> None:
        pids.update(wait_for_pids(fake_steps))
        reaper.extend(pids.values())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with pytest.raises(AirflowTaskTimeout):
        _run_execute_callable(context, op.execute, op)
    watcher.join(timeout=30)
    assert pids, "the step never started"
    assert gone(pids, timeout=5), f"left running: {group_members(pids['step'])}"


S3_CONNECTION: dict[str, Any] = {
    "conn_type": "aws",
    "login": "AKIAFLYWHEELTEST",
    "password": "s3cr3t-not-for-the-worker",
    "extra": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"},
}


def test_credentials_reach_the_step_not_the_worker(
    fake_steps: Path, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connected step gets its connection's credentials; the worker's ``os.environ`` holds
    none of them, neither while the step runs nor after. A missing optional connection is
    skipped."""
    from flywheel_airflow.operators.connected_step import ConnectedStepOperator

    monkeypatch.setenv("AIRFLOW_CONN_FLYWHEEL_S3_TEST", json.dumps(S3_CONNECTION))
    monkeypatch.delenv("AIRFLOW_CONN_FLYWHEEL_GIT_ABSENT", raising=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FLYWHEEL_GIT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    worker_env_at_start: list[dict[str, str]] = []

    class SpyingPopen(subprocess.Popen):
        """Records the worker's environment at the moment the step starts."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            worker_env_at_start.append(dict(os.environ))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", SpyingPopen)
    op = ConnectedStepOperator(
        task_id="ingest",
        step="env",
        connections={"s3": "flywheel_s3_test", "git": "flywheel_git_absent"},
        optional_connections=["git"],
    )
    step_env = op.execute(context)

    assert step_env["AWS_SECRET_ACCESS_KEY"] == S3_CONNECTION["password"]
    assert step_env["AWS_ACCESS_KEY_ID"] == S3_CONNECTION["login"]
    assert step_env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert step_env["AIRFLOW_CTX_TASK_ID"] == "t"
    assert "FLYWHEEL_GIT_TOKEN" not in step_env
    assert len(worker_env_at_start) == 1
    for worker_env in (worker_env_at_start[0], dict(os.environ)):
        assert "AWS_SECRET_ACCESS_KEY" not in worker_env
        assert "AWS_ACCESS_KEY_ID" not in worker_env
        leaked = [k for k, v in worker_env.items() if S3_CONNECTION["password"] in v]
        assert leaked == ["AIRFLOW_CONN_FLYWHEEL_S3_TEST"]  # only the test's own definition


def test_missing_required_connection_fails(
    fake_steps: Path, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowNotFoundException
    from flywheel_airflow.operators.connected_step import ConnectedStepOperator

    monkeypatch.delenv("AIRFLOW_CONN_FLYWHEEL_S3_ABSENT", raising=False)
    op = ConnectedStepOperator(
        task_id="claim", step="env", connections={"s3": "flywheel_s3_absent"}
    )
    with pytest.raises(AirflowNotFoundException):
        op.execute(context)


def test_optional_connection_error_other_than_not_found_propagates(
    fake_steps: Path, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only "not defined" is tolerated: a backend that fails to answer fails the task rather
    than running the step without the credentials it was given."""
    from airflow.sdk import BaseHook
    from flywheel_airflow.operators.connected_step import ConnectedStepOperator

    def broken(conn_id: str) -> Any:
        raise ConnectionError("secrets backend did not answer")

    monkeypatch.setattr(BaseHook, "get_connection", broken)
    op = ConnectedStepOperator(
        task_id="ingest",
        step="env",
        connections={"git": "flywheel_git"},
        optional_connections=["git"],
    )
    with pytest.raises(ConnectionError, match="did not answer"):
        op.execute(context)
