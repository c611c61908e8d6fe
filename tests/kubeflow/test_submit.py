"""``python -m ml_tasks.pipelines submit`` against the stand-in KFP server (tests/kubeflow)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.kubeflow.kfp_server import serve


def submit(home: Path, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(home),
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_KFP_HOST": host,
        "FLYWHEEL_KFP_UI_URL": "https://kubeflow.example/pipeline",
    }
    return subprocess.run(
        [sys.executable, "-m", "ml_tasks.pipelines", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_and_wait_for_a_run_that_succeeds(flywheel_home: Path) -> None:
    with serve("succeed") as (url, state):
        first = submit(flywheel_home, url, "submit", "--epochs", "3", "--wait", "--poll", "0.1")
        assert first.returncode == 0, first.stderr
        run_id = next(iter(state.runs))
        assert f"https://kubeflow.example/pipeline/#/runs/details/{run_id}" in first.stdout
        assert "succeeded" in first.stdout
        run = state.runs[run_id]
        assert run["runtime_config"]["parameters"] == {"epochs": 3}
        experiment = state.experiments[run["experiment_id"]]
        assert experiment["display_name"] == "flywheel"
        # the same code again: the pipeline version is reused, not uploaded twice
        again = submit(flywheel_home, url, "submit", "--experiment", "flywheel")
        assert again.returncode == 0, again.stderr
        assert len(state.runs) == 2
        # (KFP's upload makes a first version named after the pipeline; ours is named by hash)
        assert state.calls.count("POST /apis/v2beta1/pipelines/upload_version") == 1
        assert "reused" not in json.dumps(state.runs)
        assert len(state.experiments) == 1


def test_wait_exits_non_zero_with_the_runs_error(flywheel_home: Path) -> None:
    error = "step checks exited 3 (bad input, do not retry): data checks failed"
    with serve("fail", error) as (url, _):
        done = submit(flywheel_home, url, "submit", "--wait", "--poll", "0.1")
    assert done.returncode == 1
    assert "FAILED" in done.stderr and "data checks failed" in done.stderr


def test_submit_step_prints_the_run_and_result_reads_what_the_step_stored(
    flywheel_home: Path,
) -> None:
    with serve("succeed") as (url, state):
        done = submit(
            flywheel_home,
            url,
            "submit-step",
            "checks",
            "--run-name",
            "training-checks",
            "--context-json",
            json.dumps({"AIRFLOW_CTX_DAG_ID": "training"}),
            "--",
            "--dataset-version",
            "abc123",
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout)
        run = state.runs[out["run_id"]]
        params = run["runtime_config"]["parameters"]
        assert params["arguments"] == ["--dataset-version", "abc123"]
        assert json.loads(params["context_json"]) == {"AIRFLOW_CTX_DAG_ID": "training"}
        name = state.pipelines[out["pipeline_id"]]["display_name"]
        assert name == "flywheel-step-checks"
        result = submit(flywheel_home, url, "result", out["run_id"], "--task", "checks")
        assert result.returncode == 0 and json.loads(result.stdout)["status"] == "ok"
        missing = submit(flywheel_home, url, "result", out["run_id"], "--task", "train")
        assert missing.returncode == 3


def test_a_server_that_is_down_is_a_clear_error_to_retry(flywheel_home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    done = submit(flywheel_home, f"http://127.0.0.1:{port}", "submit")
    assert done.returncode == 75
    assert f"the KFP API at http://127.0.0.1:{port} did not answer" in done.stderr
    assert "Traceback" not in done.stderr


def test_no_endpoint_configured_says_which_setting(flywheel_home: Path) -> None:
    done = submit(flywheel_home, "", "submit")
    assert done.returncode == 1 and "FLYWHEEL_KFP_HOST" in done.stderr
