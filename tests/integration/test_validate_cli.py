"""The validate command, every option through the CLI as ``--help`` documents it, against a
real MLflow server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Workspace
from tests.servers import mlflow_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(
    workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A server with two trained runs (train's result files), nothing registered yet."""
    root = tmp_path_factory.mktemp("validate-cli")
    with mlflow_server(root / "mlflow") as url:
        workspace.env["MLFLOW_TRACKING_URI"] = url
        results = []
        for seed in ("1", "2"):
            path = root / f"train-{seed}.json"
            done = workspace.run(
                "ml_tasks.train", "--no-progress", "--seed", seed, "--result-path", str(path)
            )
            assert done.returncode == 0, done.stderr[-3000:]
            results.append(path)
        yield {"url": url, "results": results, "root": root}
        del workspace.env["MLFLOW_TRACKING_URI"]


def validate(ws: Workspace, result: Path, *args: str) -> dict[str, Any]:
    done = ws.run("ml_tasks.validate", *args, "--result-path", str(result))
    assert done.returncode == 0, done.stderr[-3000:]
    written: dict[str, Any] = json.loads(result.read_text())
    return written


def registry(url: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def test_train_result_gives_the_run_and_the_dataset_version_defaults(
    workspace: Workspace, trained: dict[str, Any], tmp_path: Path
) -> None:
    first, second = (json.loads(p.read_text()) for p in trained["results"])
    # --train-result alone: its run, tested on the version it was trained on.
    by_result = validate(
        workspace, tmp_path / "a.json", "--train-result", str(trained["results"][0])
    )
    assert by_result["mlflow_run_id"] == first["mlflow_run_id"]
    assert by_result["dataset_version"] == first["dataset_version"] == workspace.dataset_version
    assert by_result["registered"] and by_result["model_version"] == "1"
    # --run-id alone: the version data/images.dvc records in the work tree.
    by_run = validate(
        workspace, tmp_path / "b.json", "--run-id", second["mlflow_run_id"], "--evaluate-only"
    )
    assert by_run["mlflow_run_id"] == second["mlflow_run_id"]
    assert by_run["dataset_version"] == workspace.dataset_version


def test_every_other_option_does_what_help_says(
    workspace: Workspace, trained: dict[str, Any], tmp_path: Path
) -> None:
    client = registry(trained["url"])
    second = json.loads(trained["results"][1].read_text())
    run_id = second["mlflow_run_id"]
    before = len(client.search_model_versions("name='digits'"))
    help_text = workspace.run("ml_tasks.validate", "--help").stdout
    for option in ("--evaluate-only", "--min-improvement", "--force-register", "--caller-run-id"):
        assert option in help_text

    # --evaluate-only: decided, logged, nothing registered.
    evaluated = validate(workspace, tmp_path / "e.json", "--run-id", run_id, "--evaluate-only")
    assert evaluated["evaluate_only"] and not evaluated["registered"]
    assert evaluated["reason"].startswith("evaluation only, nothing registered")
    assert len(client.search_model_versions("name='digits'")) == before
    # --min-improvement: the margin to beat the incumbent.
    margin = validate(workspace, tmp_path / "m.json", "--run-id", run_id, "--min-improvement", "1")
    assert margin["decision"] == "skip" and "by the margin 1.0" in margin["reason"]
    # --force-register (floors pass) with --caller-run-id stamped on the new version.
    forced = validate(
        workspace,
        tmp_path / "f.json",
        "--run-id",
        run_id,
        "--min-improvement",
        "1",
        "--force-register",
        "--caller-run-id",
        "manual__cli-test",
    )
    assert forced["registered"] and forced["reason"].startswith("registration forced")
    mv = client.get_model_version("digits", forced["model_version"])
    assert mv.tags["flywheel.caller_run_id"] == "manual__cli-test"
    assert "challenger" in mv.aliases
    # --dataset-version: a version that is not prepared is bad input (exit 3), named.
    missing = workspace.run(
        "ml_tasks.validate", "--run-id", run_id, "--dataset-version", "0123456789abcdef"
    )
    assert missing.returncode == 3
    assert "0123456789abcdef" in missing.stderr.strip().splitlines()[-1]
    # --train-result naming no run: one clear line, exit 3.
    (tmp_path / "bad.json").write_text('{"status": "ok"}')
    bad = workspace.run("ml_tasks.validate", "--train-result", str(tmp_path / "bad.json"))
    assert bad.returncode == 3 and "names no mlflow_run_id" in bad.stderr
