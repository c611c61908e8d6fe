"""StepOperator: run one ML step (``python -m ml_tasks.<step> ...``) on the configured backend.

The DAG names the step and its arguments; *where* it runs is decided when the task runs, from
``FLYWHEEL_BACKEND`` (environment, or the Airflow Variable ``flywheel_backend``), so DAG files
never change between a laptop and a cluster:

- ``local``: a subprocess with the steps environment's interpreter (``FLYWHEEL_STEPS_PYTHON``),
  exactly the command a pod runs; the step writes its JSON result to a temporary file.
- ``kubernetes``: the same command in the steps image, through KubernetesPodOperator; the
  result comes back through the XCom sidecar (``/airflow/xcom/return.json``)
  (:mod:`flywheel_airflow.backends.kubernetes`). Deploying is its own operator
  (:class:`~flywheel_airflow.operators.deploy.DeployOperator`), which waits for the
  InferenceService on the cluster.
- ``kubeflow``: the same command as one run of a one-step Kubeflow pipeline, submitted with
  the steps environment's client; the task defers to a trigger polling KFP's REST API and
  returns the step's result (:mod:`flywheel_airflow.backends.kubeflow`).

An argument that renders to an empty string is dropped, so a DAG can write an optional flag as
one templated argument (``"{{ '--epochs=%d' % params.epochs if params.epochs else '' }}"``).

On ``local`` the step runs in a process group of its own, with an explicit environment (the
worker's, the task's ids and, for :class:`ConnectedStepOperator`, its credentials); clearing
the task, marking it failed or its ``execution_timeout`` ends the whole group
(:mod:`flywheel_airflow.operators.process`).

The step's JSON result is the task's XCom. A step that exits 3 failed on its input (a data
check, a missing dataset): the task fails without retrying, since a retry cannot fix data. A
step that exits 75 could not reach a service it needs (the MLflow server): the task fails with
the step's one-paragraph error and is retried (the DAG's ``retries``), since a retry can.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from flywheel_airflow.invocation import airflow_env, step_command, steps_python
from flywheel_airflow.operators.process import (
    KILL_GRACE_SECONDS,
    start_step_process,
    terminate_process_group,
)
from ml_tasks.core.exit_codes import EXIT_INFRASTRUCTURE, EXIT_STEP_ERROR


def selected_backend() -> str:
    """``local``, ``kubernetes`` or ``kubeflow``: read when the task runs, never in a DAG file."""
    if env := os.environ.get("FLYWHEEL_BACKEND"):
        return env
    from airflow.sdk import Variable

    return str(Variable.get("flywheel_backend", default="local"))


class StepOperator(BaseOperator):
    """Run ``ml_tasks.<step>`` with ``arguments`` (templated) and return its JSON result."""

    template_fields: Sequence[str] = ("arguments",)
    ui_color = "#e8f4ea"
    kill_grace_seconds = KILL_GRACE_SECONDS

    def __init__(self, *, step: str, arguments: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.arguments = arguments
        self._process: subprocess.Popen[str] | None = None

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        super().render_template_fields(context, jinja_env)
        self.arguments = [str(a) for a in self.arguments if str(a) != ""]

    def execute(self, context: Any) -> Any:
        backend = selected_backend()
        if backend == "local":
            return self.run_local(context)
        if backend == "kubernetes":
            from flywheel_airflow.backends.kubernetes import run_in_pod

            return run_in_pod(self, context)
        if backend == "kubeflow":
            from flywheel_airflow.backends.kubeflow import submit_step

            return submit_step(self, context)
        raise ValueError(f"unknown backend {backend!r}: expected local, kubernetes or kubeflow")

    def execute_kubeflow_done(self, context: Any, event: dict[str, Any]) -> Any:
        """Resume once the step's Kubeflow run ended (the trigger fired)."""
        from flywheel_airflow.backends.kubeflow import finish_step

        return finish_step(self, context, event)

    def step_environment(self) -> dict[str, str]:
        """Variables the step needs on top of the worker's (credentials, in subclasses).

        They go into the step's own environment only: the worker's ``os.environ`` is shared
        by everything else that runs in it, and must not carry one task's credentials.
        """
        return {}

    def on_kill(self) -> None:
        """End the step's whole process tree (task cleared, marked failed or timed out)."""
        terminate_process_group(self._process, self.kill_grace_seconds, self.log)

    def run_local(self, context: Any) -> Any:
        import json

        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        with tempfile.TemporaryDirectory(prefix=f"flywheel-{self.step}-") as tmp:
            result_path = Path(tmp) / "result.json"
            command = [
                steps_python(),
                *step_command(self.step, self.arguments),
                "--result-path",
                str(result_path),
            ]
            env = {
                **os.environ,
                **airflow_env(context),
                "PYTHONUNBUFFERED": "1",
                **self.step_environment(),
            }
            self.log.info("Running step: %s", " ".join(command))
            self._process = proc = start_step_process(command, env)
            try:
                tail = self._relay_output(proc)
                proc.wait()
            except BaseException:
                # A timeout (AirflowTaskTimeout), the supervisor's SIGINT (KeyboardInterrupt,
                # which does not call on_kill) or a failure here: the step, in a session of its
                # own, would otherwise outlive this try.
                terminate_process_group(proc, self.kill_grace_seconds, self.log)
                raise
            finally:
                # The step has exited (or its group was ended above): forget it, so a later
                # on_kill signals nothing and the operator stays copyable (a Popen holds a lock).
                self._process = None
                if proc.stdout is not None:
                    proc.stdout.close()
            message = "\n".join(ln for ln in tail if not ln.startswith("{"))
            if proc.returncode == EXIT_STEP_ERROR:
                raise AirflowFailException(f"step {self.step} refused its input:\n{message}")
            if proc.returncode == EXIT_INFRASTRUCTURE:
                raise AirflowException(
                    f"step {self.step} could not reach a service it needs; a retry may "
                    f"succeed:\n{message}"
                )
            if proc.returncode != 0:
                raise AirflowException(f"step {self.step} exited with {proc.returncode}")
            return json.loads(result_path.read_text())

    def _relay_output(self, proc: subprocess.Popen[str]) -> list[str]:
        """Log the step's output line by line; return its last 20 lines for an error message."""
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip("\n")
            self.log.info("%s", line)
            tail = [*tail[-19:], line]
        return tail
