"""Train when the MLflow tracking server is gone: a bounded wait, one clear paragraph, a
`failed` event, a result saying what failed, exit 75 (retry), and no run left RUNNING for good.
Real servers on 127.0.0.1; "gone" is a port where nothing listens, or a server stopped mid-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Workspace
from tests.servers import mlflow_server
from tools.local_servers import free_port

pytestmark = pytest.mark.slow

# MLflow's own retry settings, small so the test waits seconds: 2 retries, 2-3 s of backoff.
FAST_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def assert_one_paragraph_tracking_error(stderr: str, url: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    error = stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: the MLflow tracking server at {url} did not answer"), error
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in error and "exit code 75" in error
    return error


def failed_events(ws: Workspace) -> list[dict[str, object]]:
    return [e for e in ws.events() if e["action"] == "failed" and e["component"] == "train"]


def test_train_with_nothing_listening_exits_75_with_a_result_and_an_event(
    workspace: Workspace, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = tmp_path / "result.json"
    started = time.monotonic()
    done = workspace.run(
        "ml_tasks.train",
        "--no-progress",
        "--result-path",
        str(result),
        MLFLOW_TRACKING_URI=url,
        **FAST_RETRIES,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 75, done.stderr[-3000:]
    error = assert_one_paragraph_tracking_error(done.stderr, url)
    assert seconds < 60  # imports plus at most 3 s of MLflow's backoff
    written = json.loads(result.read_text())
    assert written["status"] == "failed" and written["retry"] is True
    assert written["tracking_uri"] == url and written["error"] == error.removeprefix("error: ")
    assert failed_events(workspace)[-1]["tracking_uri"] == url


def test_server_stopped_mid_run_leaves_a_run_the_next_train_marks_failed(
    workspace: Workspace, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    port = free_port()
    result = tmp_path / "result.json"
    with mlflow_server(tmp_path / "mlflow", port=port) as url:
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        command = ["ml_tasks.train", "--no-progress", "--epochs", "500"]
        train = subprocess.Popen(
            [sys.executable, "-m", *command, "--result-path", str(result)],
            env={**workspace.env, "MLFLOW_TRACKING_URI": url, **FAST_RETRIES},
            cwd=workspace.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        run_id = None
        while run_id is None and time.monotonic() < deadline and train.poll() is None:
            time.sleep(0.5)
            runs = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                filter_string="attributes.status = 'RUNNING' and metrics.val_accuracy > 0",
            )
            run_id = runs[0].info.run_id if runs else None
        assert run_id is not None, "train never logged an epoch"
    stopped = time.monotonic()  # the server is gone; train is still in its epochs
    try:
        _, stderr = train.communicate(timeout=120)
    finally:
        train.kill()
    assert train.returncode == 75, stderr[-3000:]
    assert time.monotonic() - stopped < 60
    error = assert_one_paragraph_tracking_error(stderr, url)
    assert f"MLflow run {run_id} could not be closed" in error
    written = json.loads(result.read_text())
    assert written["status"] == "failed" and written["mlflow_run_id"] == run_id
    assert failed_events(workspace)[-1]["mlflow_run_id"] == run_id

    with mlflow_server(tmp_path / "mlflow", port=port):  # back, with the same store
        assert client.get_run(run_id).info.status == "RUNNING"  # as the error said
        again = workspace.run(
            "ml_tasks.train", "--no-progress", "--epochs", "1", MLFLOW_TRACKING_URI=url
        )
        assert again.returncode == 0, again.stderr[-3000:]
        left = client.get_run(run_id)
        assert left.info.status == "FAILED"
        assert "could not close it" in left.data.tags["flywheel.failure"]
    marked = [e for e in workspace.events() if e["action"] == "mlflow_run_marked_failed"]
    assert [e["mlflow_run_id"] for e in marked] == [run_id]
