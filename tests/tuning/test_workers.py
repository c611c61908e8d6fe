"""Workers in separate processes on a real PostgreSQL and a real MLflow server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tuning.conftest import REPO, child_runs, start_worker, tune_command, write_params

pytestmark = pytest.mark.slow


def step(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        tune_command(*args),
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def trials(storage: str, study: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def check_mlflow(mlflow_url: str, parent: str, storage: str, study: str) -> None:
    by_trial = {
        int(r.data.tags["flywheel.tuning.trial"]): r for r in child_runs(mlflow_url, parent)
    }
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    done = trials(storage, study)
    assert sorted(by_trial) == [t.number for t in done]  # exactly one child run per trial
    for t in done:
        assert by_trial[t.number].info.status == status[t.state.name], t.number
        assert by_trial[t.number].data.tags["flywheel.tuning.state"] == t.state.name


@pytest.fixture
def shared_env(tune_env: dict[str, str], postgres: str, mlflow_url: str) -> dict[str, str]:
    return {**tune_env, "FLYWHEEL_OPTUNA_STORAGE": postgres, "MLFLOW_TRACKING_URI": mlflow_url}


def test_two_workers_finish_exactly_the_requested_trials(
    shared_env: dict[str, str], postgres: str, mlflow_url: str
) -> None:
    created = step(shared_env, "create", "--dataset-version", "digits", "--study", "two")
    workers = [
        start_worker(shared_env, "--study", "two", "--n-trials", "9", "--worker-index", str(i))
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = [json.loads(out.strip().splitlines()[-1])["trials"] for out in outputs]
    assert sum(ran) == 9 and min(ran) >= 1, ran  # both worked, none ran twice
    done = trials(postgres, "two")
    assert sorted(t.number for t in done) == list(range(9))
    assert all(t.state.name in ("COMPLETE", "PRUNED", "FAIL") for t in done)
    summary = step(shared_env, "finish", "--study", "two")
    assert sum(summary["counts"].values()) == 9
    check_mlflow(mlflow_url, created["mlflow_parent_run_id"], postgres, "two")


def test_a_killed_worker_loses_only_its_running_trial(
    shared_env: dict[str, str], postgres: str, mlflow_url: str
) -> None:
    write_params(Path(shared_env["FLYWHEEL_PARAMS"]), epochs=6, pruner={"name": "none"})
    created = step(shared_env, "create", "--dataset-version", "digits", "--study", "kill")
    survivor = start_worker(shared_env, "--study", "kill", "--n-trials", "6")
    victim = start_worker(shared_env, "--study", "kill", "--n-trials", "6", "--worker-index", "1")
    deadline = time.monotonic() + 180
    running = None
    while running is None and time.monotonic() < deadline:
        for t in trials(postgres, "kill"):
            if t.state.name == "RUNNING" and t.user_attrs.get("worker", "").endswith(
                f":{victim.pid}"
            ):
                running = t.number
        time.sleep(0.3)
    assert running is not None, "the victim never started a trial"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    out = survivor.communicate(timeout=600)[0]
    assert survivor.returncode == 0, out
    summary = step(shared_env, "finish", "--study", "kill")
    done = {t.number: t for t in trials(postgres, "kill")}
    assert sorted(done) == list(range(6))
    assert done[running].state.name == "FAIL"
    assert sum(summary["counts"].values()) == 6
    assert summary["counts"].get("COMPLETE", 0) >= 4
    check_mlflow(mlflow_url, created["mlflow_parent_run_id"], postgres, "kill")
    killed = [
        r
        for r in child_runs(mlflow_url, created["mlflow_parent_run_id"])
        if r.data.tags["flywheel.tuning.trial"] == str(running)
    ]
    assert "stopped sending heartbeats" in killed[0].data.tags["flywheel.tuning.error"]
