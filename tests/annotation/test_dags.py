"""The annotation DAG files: import cleanly, cheaply, without connections, wired as designed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from annotation_support import REPO

DAGS = {"intake": "flywheel_intake", "ingest": "flywheel_ingest"}


def load(name: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{name}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[DAGS[name]]


@pytest.mark.parametrize("name", sorted(DAGS))
def test_dag_file_is_wiring_only(name: str, airflow_home: Path, monkeypatch: Any) -> None:
    from airflow.sdk import BaseHook

    def no_lookups(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a connection was looked up while parsing")

    monkeypatch.setattr(BaseHook, "get_connection", no_lookups)
    dag = load(name)
    assert dag.doc_md and dag.tags and "flywheel" in dag.tags
    assert all(task.retries >= 2 for task in dag.tasks)
    assert dag.start_date is not None and dag.start_date.year == 2025


def test_intake_runs_claim_preannotate_tasks_after_the_sensor(airflow_home: Path) -> None:
    dag = load("intake")
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["wait_for_images", "claim_images", "preannotate", "create_label_studio_tasks"]
    sensor = dag.get_task("wait_for_images")
    assert sensor.deferrable
    assert dag.get_task("create_label_studio_tasks").connections["label_studio"]


def test_ingest_publishes_the_dataset_asset(airflow_home: Path) -> None:
    from flywheel_airflow.assets import DATASET_URI

    dag = load("ingest")
    publish = dag.get_task("publish_dataset_version")
    assert [a.uri for a in publish.outlets] == [DATASET_URI]
    assert dag.max_active_runs == 1
