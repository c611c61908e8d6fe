"""The ``kubeflow`` backend: each step task is one run of a one-step KFP pipeline.

Why one run per task, not the chain as one run: the DAG file stays as it is (the same tasks,
XComs, retries and timeouts on every backend); every gate (register if better, approval,
deploy) stays in Airflow between runs; a step that fails is retried alone, with the step
contract (exit 3 fails at once, 75 retries); and the KFP UI still shows each step's logs.
The chain as one run is what ``python -m ml_tasks.pipelines submit`` gives a data scientist.

:func:`submit_step` asks the steps environment (kfp cannot be installed beside Airflow) to
compile, upload or reuse, and start the run (``python -m ml_tasks.pipelines submit-step``),
logs the run's link and defers to :class:`KubeflowRunTrigger`. :func:`finish_step` reads the
step's result (stored in the lake by the component; ``... result``) as the task's XCom, or
fails the task with the run's error.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from flywheel_airflow.invocation import airflow_env, steps_python
from ml_tasks.core.exit_codes import EXIT_INFRASTRUCTURE, EXIT_STEP_ERROR

DEFAULT_TIMEOUT = 6 * 3600.0


def _steps(op: Any, *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [steps_python(), "-m", "ml_tasks.pipelines", *args], capture_output=True, text=True
    )
    return done.returncode, done.stdout, done.stderr


def submit_step(op: Any, context: Any) -> None:
    """Start the step as a KFP run and defer until it ends."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from flywheel_airflow.triggers.kubeflow import KubeflowRunTrigger

    ids = airflow_env(context)
    run_name = f"{ids['AIRFLOW_CTX_DAG_ID']}.{op.task_id} {ids['AIRFLOW_CTX_DAG_RUN_ID']}"
    code, out, err = _steps(
        op,
        "submit-step",
        op.step,
        "--run-name",
        run_name,
        "--context-json",
        json.dumps(ids),
        "--",
        *op.arguments,
    )
    if code == EXIT_INFRASTRUCTURE:
        raise AirflowException(f"step {op.step} was not submitted to Kubeflow: {err.strip()}")
    if code != 0:
        raise AirflowFailException(f"step {op.step} was not submitted to Kubeflow: {err.strip()}")
    submitted = json.loads(out.strip().splitlines()[-1])
    op.log.info("Kubeflow run %s: %s", submitted["run_id"], submitted["url"])
    timeout = op.execution_timeout.total_seconds() if op.execution_timeout else DEFAULT_TIMEOUT
    op.defer(
        trigger=KubeflowRunTrigger(
            run_id=submitted["run_id"],
            host=os.environ.get("FLYWHEEL_KFP_HOST", ""),
            ui_url=os.environ.get("FLYWHEEL_KFP_UI_URL", ""),
            namespace=os.environ.get("FLYWHEEL_KFP_NAMESPACE", ""),
            deadline=time.time() + timeout,
            poll_interval=float(os.environ.get("FLYWHEEL_KFP_POLL_SECONDS", "10")),
        ),
        method_name="execute_kubeflow_done",
    )


def finish_step(op: Any, context: Any, event: dict[str, Any]) -> Any:
    """The run ended: its step's result is the XCom, or the task fails with the run's error."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    status, run_id = event.get("status"), str(event.get("run_id"))
    op.log.info("Kubeflow run %s ended %s: %s", run_id, status, event.get("url"))
    code, out, err = _steps(op, "result", run_id, "--task", op.step)
    result = json.loads(out.strip().splitlines()[-1]) if code == 0 and out.strip() else None
    if status == "succeeded" and result is not None:
        return result
    message = (result or {}).get("error") or event.get("message") or err.strip()
    where = f"Kubeflow run {run_id} ({event.get('url')})"
    if status == "succeeded":
        raise AirflowException(f"{where} succeeded but stored no result: {err.strip()}")
    exit_code = int((result or {}).get("exit_code") or 0)
    if exit_code == EXIT_STEP_ERROR:
        raise AirflowFailException(f"step {op.step} refused its input in {where}: {message}")
    if status == "timeout":
        raise AirflowException(f"{where}: {message}")
    if status in ("unreachable", "error"):
        raise AirflowException(f"lost track of {where}; a retry submits again: {message}")
    raise AirflowException(f"step {op.step} {status} in {where}: {message}")
