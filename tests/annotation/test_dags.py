"""The annotation DAG files: import cleanly, cheaply, without connections, wired as designed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
    assert dag.start_date is not None and dag.start_date.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("name", "interval"), [("intake", timedelta(minutes=30)), ("ingest", timedelta(hours=1))]
)
def test_a_new_deployment_starts_now_without_a_backlog(
    name: str, interval: timedelta, airflow_home: Path
) -> None:
    """The scheduler's first run of the DAG, from the serialized DAG as the scheduler reads
    it: within one interval of now, not one run per interval since the start date."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    dag = DagSerialization.from_dict(DagSerialization.to_dict(load(name)))
    now = datetime.now(UTC)
    first = dag.timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=dag.catchup),
    )
    assert dag.start_date < now - interval  # there is a past that could be caught up
    assert first is not None and now - interval <= first.run_after <= now + interval


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
