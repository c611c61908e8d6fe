"""What the loop tests share: running a DAG with ``dag.test()``, and reading what it left
(dataset files, git log, dataset Asset events) and what people did in Label Studio."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from annotation_support import REPO, Loop


def load_dag(name: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{name}.py"))
    assert not bag.import_errors, bag.import_errors
    (dag,) = bag.dags.values()
    return dag


def run_dag(name: str, when: datetime, conf: dict[str, Any] | None = None) -> dict[str, str]:
    """Run a DAG with dag.test(); the state of each task and of the run (``dag_run``)."""
    dag = load_dag(name)
    # run_after pins the run id (manual__<when>): running the same date again is a rerun.
    run = dag.test(logical_date=when, run_after=when, run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    return {**states, "dag_run": str(run.state)}


def manual_run_id(when: datetime) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    return str(
        DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=when, run_after=when)
    )


def dataset_events() -> list[Any]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from flywheel_airflow.assets import DATASET_URI
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.uri == DATASET_URI)
        ).all()
        return [{"extra": dict(r.extra or {}), "source_dag_id": r.source_dag_id} for r in rows]


def dataset_files(repo: Path) -> dict[str, str]:
    """Content name -> class folder, for every image in the work tree."""
    return {p.name: p.parent.name for p in (repo / "data" / "images").glob("*/*.png")}


def git_log(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


def choice(from_name: str, value: str) -> dict[str, Any]:
    return {
        "from_name": from_name,
        "to_name": "image",
        "type": "choices",
        "value": {"choices": [value]},
    }


INTAKE_CONF = {"min_images": 12, "batch_size": 50, "poke_seconds": 1}


def accept_every_guess(loop: Loop, count: int) -> None:
    """A person accepts the champion's label on every task; waits until the export storage
    wrote the ``count`` annotations to ``labeled/``."""
    ls = loop.label_studio_client()
    for task in loop.tasks():
        guess = task.predictions[0].result[0]["value"]["choices"][0]
        ls.annotations.create(
            id=task.id, result=[choice("label", guess)], request_options={"max_retries": 0}
        )
    deadline = time.monotonic() + 30
    while len(loop.keys("labeled/")) < count and time.monotonic() < deadline:
        time.sleep(0.5)


def tracked_version(repo: Path) -> str:
    text = (repo / "data" / "images.dvc").read_text()
    (md5,) = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if "md5:" in ln]
    return md5.removesuffix(".dir")
