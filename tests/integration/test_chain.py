"""The whole step chain on a fresh clone against a real MLflow server on 127.0.0.1."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import make_repo_copy
from tests.servers import mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("chain")
    repo = make_repo_copy(root / "repo")
    with mlflow_server(root / "mlflow") as url:
        yield {
            "FLYWHEEL_REPO": str(repo),
            "FLYWHEEL_HOME": str(root / "home"),
            "MLFLOW_TRACKING_URI": url,
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "HOME": str(root),
        }


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True)


def test_fresh_clone_chain_registers_a_challenger_then_nothing_new(env: dict[str, str]) -> None:
    from mlflow import MlflowClient

    first = run(env, "ml_tasks.chain")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "registered digits v1 as challenger" in first.stdout

    committed = yaml.safe_load((Path(env["FLYWHEEL_REPO"]) / "data/images.dvc").read_text())
    version = committed["outs"][0]["md5"].removesuffix(".dir")
    # both URIs: an in-process test may have set MLflow's global registry URI elsewhere
    url = env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    mv = client.get_model_version_by_alias("digits", "challenger")
    assert mv.version == "1"
    assert mv.tags["flywheel.dataset_version"] == version
    assert float(mv.tags["flywheel.test_accuracy"]) >= 0.85
    run_data = client.get_run(mv.run_id).data
    assert run_data.params["epochs"] == "15" and run_data.params["dataset_version"] == version
    history = client.get_metric_history(mv.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(15))
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"confusion_matrix.png", "data_checks.json", "test_metrics.json"} <= artifacts

    second = run(env, "ml_tasks.chain")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "decision: skip" in second.stdout and "does not beat challenger v1" in second.stdout
    assert len(client.search_model_versions("name='digits'")) == 1


def test_prepare_fetches_a_version_missing_from_the_workspace(env: dict[str, str]) -> None:
    """What a pod does: it has the code and the DVC remote, not the files."""
    repo = Path(env["FLYWHEEL_REPO"])
    version = yaml.safe_load((repo / "data/images.dvc").read_text())["outs"][0]["md5"].removesuffix(
        ".dir"
    )
    shutil.rmtree(repo / "data" / "images", ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
    done = run(env, "ml_tasks.prepare", "--dataset-version", version, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["prepared"] == 1797 and result["accounted"]
    assert '"action":"dataset_fetched"' in done.stderr
