"""The whole pipeline on one machine with kfp.local: the digits, embedded MLflow, a challenger."""

from __future__ import annotations

import json

import pytest

from tests.kubeflow.conftest import run_module

pytestmark = pytest.mark.slow


def test_kfp_local_run_registers_a_challenger_with_its_kfp_run_id(
    clone_env: dict[str, str],
) -> None:
    done = run_module(clone_env, "ml_tasks.pipelines", "local")
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["decision"] == "register" and result["model_version"] == "1"
    kfp_run_id = result["kfp_run_id"]
    assert kfp_run_id

    from mlflow import MlflowClient

    uri = f"sqlite:///{clone_env['FLYWHEEL_HOME']}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias("digits", "challenger")
    assert str(mv.version) == "1"
    assert mv.tags["flywheel.kfp_run_id"] == kfp_run_id
    assert mv.tags["flywheel.caller_run_id"] == kfp_run_id  # no orchestrator: KFP's run
    assert mv.tags["flywheel.dataset_version"] == result["dataset_version"]
    run = client.get_run(mv.run_id)
    assert run.data.tags["flywheel.kfp_run_id"] == kfp_run_id
    assert run.data.tags["flywheel.caller_run_id"] == kfp_run_id
    assert run.data.tags["flywheel.data_checks"] == "passed"
