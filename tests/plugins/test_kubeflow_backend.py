"""The kubeflow backend against the stand-in KFP server (tests/kubeflow/kfp_server.py, run
with the steps interpreter): submit, defer, the trigger's events, the task's result or error."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.kubeflow.kfp_server import serve_in_process
from tests.plugins.test_kubernetes_backend import dag, fake_context  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
STEPS_PYTHON = str(REPO / ".venvs" / "steps" / "bin" / "python")


@contextmanager
def stand_in(mode: str, error: str = "") -> Iterator[str]:
    """The stand-in KFP server in a steps-environment process; yields its URL."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "kfp-server.log"
        with serve_in_process(STEPS_PYTHON, mode, log, error) as url:
            yield url


def server_state(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/stand-in/state") as response:
        loaded: dict[str, Any] = json.loads(response.read())
    return loaded


@pytest.fixture
def kubeflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLYWHEEL_BACKEND", "kubeflow")
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLYWHEEL_KFP_POLL_SECONDS", "0.1")
    monkeypatch.setenv("FLYWHEEL_KFP_UI_URL", "https://kubeflow.example")
    monkeypatch.setenv("FLYWHEEL_STEPS_PYTHON", STEPS_PYTHON)


def submitted(training: Any, task_id: str, url: str, **overrides: Any) -> tuple[Any, Any, Any]:
    """Execute the task until it defers; returns (operator, context, trigger)."""
    from airflow.sdk.exceptions import TaskDeferred

    os.environ["FLYWHEEL_KFP_HOST"] = url
    op = copy.deepcopy(training.get_task(task_id))
    for name, value in overrides.items():
        setattr(op, name, value)
    context = fake_context(training, op)
    op.render_template_fields(context)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    assert deferred.value.method_name == "execute_kubeflow_done"
    return op, context, deferred.value.trigger


def first_event(trigger: Any) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async for event in trigger.run():
            payload: dict[str, Any] = event.payload
            return payload
        raise AssertionError("no event")

    return asyncio.run(run())


def test_a_run_that_succeeds_returns_the_steps_result(dag: Any, kubeflow: None) -> None:  # noqa: F811
    with stand_in("succeed") as url:
        op, context, trigger = submitted(dag, "checks", url)
        event = first_event(trigger)
        assert event["status"] == "succeeded"
        assert event["url"] == f"https://kubeflow.example/#/runs/details/{event['run_id']}"
        result = op.execute_kubeflow_done(context, event=event)
        assert result["status"] == "ok" and result["kfp_run_id"] == event["run_id"]
        run = server_state(url)["runs"][event["run_id"]]
    params = run["runtime_config"]["parameters"]
    assert params["arguments"] == ["--dataset-version", "f9344aa9688f9580d5cee22719ea596a"]
    assert json.loads(params["context_json"])["AIRFLOW_CTX_TASK_ID"] == "checks"
    # the trigger serialises without the token and with a wall-clock deadline
    _, kwargs = trigger.serialize()
    assert kwargs["host"] == url and "token" not in json.dumps(kwargs)


def test_a_run_that_fails_on_its_input_fails_the_task_without_retry(
    dag: Any,  # noqa: F811
    kubeflow: None,
) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    error = "step checks exited 3 (bad input, do not retry): 2 of 11 expectations failed"
    with stand_in("fail", error) as url:
        op, context, trigger = submitted(dag, "checks", url)
        event = first_event(trigger)
        assert event["status"] == "failed"
        with pytest.raises(AirflowFailException, match="2 of 11 expectations failed"):
            op.execute_kubeflow_done(context, event=event)


def test_a_run_still_running_at_the_timeout_is_cancelled(dag: Any, kubeflow: None) -> None:  # noqa: F811
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    with stand_in("hang") as url:
        op, context, trigger = submitted(dag, "train", url, execution_timeout=timedelta(seconds=1))
        event = first_event(trigger)
        assert event["status"] == "timeout"
        assert server_state(url)["runs"][event["run_id"]]["state"] == "CANCELED"
        with pytest.raises(AirflowException, match="still running at the task's timeout") as exc:
            op.execute_kubeflow_done(context, event=event)
        assert not isinstance(exc.value, AirflowFailException)


def test_a_killed_task_cancels_its_run(dag: Any, kubeflow: None) -> None:  # noqa: F811
    with stand_in("hang") as url:
        _, _, trigger = submitted(dag, "train", url)
        asyncio.run(trigger.on_kill())
        state = server_state(url)
    assert [r["state"] for r in state["runs"].values()] == ["CANCELED"]


def test_a_server_that_is_down_fails_the_try_for_a_retry(dag: Any, kubeflow: None) -> None:  # noqa: F811
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
    from flywheel_airflow.triggers.kubeflow import KubeflowRunTrigger

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    os.environ["FLYWHEEL_KFP_HOST"] = url
    op = copy.deepcopy(dag.get_task("checks"))
    context = fake_context(dag, op)
    op.render_template_fields(context)
    with pytest.raises(AirflowException, match="did not answer") as exc:
        op.execute(context)
    assert not isinstance(exc.value, AirflowFailException)  # retried by Airflow
    # and a server that goes away while a run is watched ends the wait, also retried
    trigger = KubeflowRunTrigger(
        run_id="r1", host=url, deadline=9e9, poll_interval=0.01, max_unreachable=2
    )
    event = first_event(trigger)
    assert event["status"] == "unreachable" and "did not answer" in event["message"]
