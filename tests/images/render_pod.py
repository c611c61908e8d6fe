"""Print, as JSON, the pod the kubernetes backend renders for one task of a DAG.

Run with the orchestrator's interpreter (Airflow and the cncf provider live there); the image
tests, in the steps environment, run the pod's container from it. Input on stdin:
``{"dag_file": ..., "dag_id": ..., "task_id": ..., "upstream": {task_id: result}}``. Rendered
without a cluster, as ``tests/plugins`` does: ``build_pod_request_obj(dry_run=True)``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from tools.airflow_home import airflow_home_settings

REPO = Path(__file__).resolve().parents[2]


def render(request: dict[str, Any]) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from flywheel_airflow.backends.kubernetes import build_step_pod
    from flywheel_airflow.gates import is_backfill
    from kubernetes.client import ApiClient

    bag = DagBag(dag_folder=str(REPO / "dags" / request["dag_file"]))
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.dags[request["dag_id"]]
    task = dag.get_task(request["task_id"])
    upstream = request["upstream"]

    class TaskInstance:  # a plain class: the sandboxed Jinja refuses to call mocks
        dag_id, task_id, try_number, map_index = dag.dag_id, task.task_id, 1, -1

        def xcom_pull(self, task_ids: str | None = None, key: str = "return_value") -> Any:
            return upstream.get(f"{task_ids}.{key}", upstream.get(str(task_ids)))

    ti = TaskInstance()
    run_id = "manual__2026-03-01T02:00:00+00:00"
    logical_date = datetime(2026, 3, 1, 2, tzinfo=UTC)
    context = {
        "ti": ti,
        "task_instance": ti,
        "task": task,
        "run_id": run_id,
        "dag_run": mock.Mock(
            run_id=run_id, run_type="manual", dag_id=dag.dag_id, logical_date=logical_date
        ),
        "logical_date": logical_date,
        "params": {k: dag.params[k] for k in dag.params},
        "is_backfill": is_backfill,
    }
    task.render_template_fields(context)
    kpo = build_step_pod(task.step, task.arguments, context, task_id=task.task_id)
    kpo.render_template_fields(context)
    return dict(ApiClient().sanitize_for_serialization(kpo.build_pod_request_obj(dry_run=True)))


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="flywheel-render-pod-"))
    os.environ.update(
        {
            **airflow_home_settings(home / "airflow"),
            "FLYWHEEL_HOME": str(home / "flywheel"),
        }
    )
    sys.path.insert(0, str(REPO / "plugins"))
    print(json.dumps(render(json.load(sys.stdin))))


if __name__ == "__main__":
    main()
