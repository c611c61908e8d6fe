"""MLflow set-up shared by the steps: where runs go, and the lineage every run carries."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from ml_tasks.config import Settings


def use_mlflow(settings: Settings) -> str:
    """Point MLflow at the configured tracking server or embedded store; returns experiment id.

    With an embedded store (SQLite) the artifacts go to ``<home>/mlartifacts``; with a server,
    the server decides (``--serve-artifacts``), so nothing is written beside the caller.
    """
    import mlflow

    # Steps log JSON events; MLflow's per-file download bars only clutter task logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    artifact_location = settings.artifact_uri if settings.tracking_is_local else None
    try:
        return str(
            mlflow.create_experiment(settings.experiment, artifact_location=artifact_location)
        )
    except mlflow.exceptions.MlflowException:
        # Another run created it between our look-up and our create.
        experiment = mlflow.get_experiment_by_name(settings.experiment)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def code_revision(settings: Settings) -> str:
    """The git commit of the code that runs (``FLYWHEEL_CODE_REVISION`` in images)."""
    if env := os.environ.get("FLYWHEEL_CODE_REVISION"):
        return env
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=settings.repo, capture_output=True, text=True
    )
    revision = done.stdout.strip() if done.returncode == 0 else "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "ml_tasks"],
        cwd=settings.repo,
        capture_output=True,
        text=True,
    )
    return revision + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def lineage_tags(
    settings: Settings, dataset_version: str, caller_run_id: str | None
) -> dict[str, Any]:
    """Tags that tie a run or model version to its data, code and orchestrator run."""
    tags: dict[str, Any] = {
        "flywheel.dataset_version": dataset_version,
        "flywheel.code_revision": code_revision(settings),
    }
    if caller_run_id:
        tags["flywheel.caller_run_id"] = caller_run_id
    for key, env in (
        ("flywheel.dag_id", "AIRFLOW_CTX_DAG_ID"),
        ("flywheel.task_id", "AIRFLOW_CTX_TASK_ID"),
    ):
        if os.environ.get(env):
            tags[key] = os.environ[env]
    return tags
