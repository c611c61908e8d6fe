"""
### Ingest: validated annotations -> new DVC dataset version -> training

Label Studio's export storage writes every saved annotation to the lake's `labeled/`.
This DAG (hourly, or triggered by hand) adds the validated images to `data/images/<class>/`
(a human correction wins over the model's guess; an image marked *unusable* goes to
`quarantine/` with the reason; an annotation edited since the last ingest moves its image),
then `dvc add` + `dvc push`, records the version in `data/versions.jsonl`, commits both (and
pushes where the repository has a remote, credentials from `flywheel_git`), and publishes the
**dataset Asset**, which schedules the training DAG. A run with nothing new publishes nothing.

A rerun after a crash at any point (even between `dvc push` and the commit) finishes the
version once: a version committed but not pushed (the push failed) is pushed, and a version
ingest made that no Asset event carries yet is announced.
Connections: `flywheel_s3` (aws), optional `flywheel_git` (login + token).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, task
from flywheel_airflow.assets import dataset_asset
from flywheel_airflow.dag_defaults import flywheel_dag_args
from flywheel_airflow.operators.connected_step import ConnectedStepOperator

DATASET = dataset_asset()


@dag(
    dag_id="flywheel_ingest",
    schedule="@hourly",
    max_active_runs=1,  # one writer of the dataset and the git history at a time
    **flywheel_dag_args(__doc__, "annotation", "dataset"),
)
def flywheel_ingest() -> None:
    ingest_annotations = ConnectedStepOperator(
        task_id="ingest_annotations",
        step="annotation.ingest",
        connections={"s3": "flywheel_s3", "git": "flywheel_git"},
        optional_connections=["git"],
    )

    @task(inlets=[DATASET], outlets=[DATASET])
    def publish_dataset_version(
        result: Any, *, inlet_events: Any = None, outlet_events: Any = None
    ) -> str:
        """Announce the version ingest made, once: skip (no event) when an event carries it.

        The Asset's own history is the record of what was announced, so a version committed
        by a run that failed before this task (a failed push, a crash) is announced by the
        next run, and a rerun after this task succeeded announces nothing twice.
        """
        from airflow.sdk.exceptions import AirflowSkipException

        version = result["dataset_version"]
        if not result.get("announce"):
            raise AirflowSkipException("the dataset version was not made by ingest: nothing new")
        latest = list(inlet_events[DATASET].ascending(False).limit(1))
        if latest and (latest[0].extra or {}).get("dataset_version") == version:
            raise AirflowSkipException(f"dataset version {version} is already announced")
        outlet_events[DATASET].extra = {
            "dataset_version": version,
            "commit": result.get("commit"),
            "labeled": result.get("labeled"),
            "quarantined": result.get("quarantined"),
        }
        return str(version)

    publish_dataset_version(ingest_annotations.output)


flywheel_ingest()
