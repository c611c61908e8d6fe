"""Submit a pipeline to a Kubeflow Pipelines installation, without Airflow.

``submit`` compiles the training pipeline, uploads it (or reuses the version with the same
content: the version is named by the IR's hash), creates a run in the experiment
(``--experiment``, default ``FLYWHEEL_KFP_EXPERIMENT``), prints the run's URL and, with
``--wait``, waits and exits non-zero unless it succeeded. ``submit-step`` does the same for one
step (the Airflow ``kubeflow`` backend calls it and prints JSON); ``result`` prints the result
a step of a run stored in the lake. Exit codes: 0 done, 1 the run failed, 3 nothing to read,
75 the KFP API did not answer (retry later).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml_tasks.core.exit_codes import EXIT_INFRASTRUCTURE, EXIT_STEP_ERROR
from ml_tasks.pipelines.rest import (
    TERMINAL,
    KfpClient,
    KfpError,
    KfpSettings,
    KfpUnavailable,
    run_error,
)


def compiled(pipeline_func: Any) -> bytes:
    from ml_tasks.pipelines.pipeline import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="flywheel-kfp-") as tmp:
        return compile_pipeline(pipeline_func, Path(tmp) / "pipeline.yaml").read_bytes()


def submit(
    client: KfpClient,
    name: str,
    ir: bytes,
    parameters: dict[str, Any],
    *,
    run_name: str,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Upload or reuse ``ir`` as pipeline ``name`` and start a run; returns ids and URL."""
    version = client.ensure_pipeline_version(name, hashlib.sha256(ir).hexdigest()[:16], ir)
    experiment_id = client.ensure_experiment(experiment or client.settings.experiment)
    run = client.create_run(run_name, version, parameters, experiment_id)
    run_id = str(run["run_id"])
    return {
        "run_id": run_id,
        "url": client.settings.run_url(run_id),
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
        "version_reused": version["reused"],
        "experiment_id": experiment_id,
    }


def wait(client: KfpClient, run_id: str, *, poll: float = 5.0, timeout: float | None = None) -> Any:
    """Poll the run until it ends (or ``timeout`` seconds pass); returns the run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        if run.get("state") in TERMINAL:
            return run
        if deadline is not None and time.monotonic() > deadline:
            return run
        time.sleep(poll)


def kfp_exit_code(call: Callable[[KfpClient], int]) -> int:
    """Run ``call`` with a client of the configured KFP API; an API that did not answer is 75
    (retry later), any other API error 1, each with one line on stderr."""
    try:
        return call(KfpClient(KfpSettings()))
    except KfpUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFRASTRUCTURE
    except KfpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def submit_training(
    parameters: dict[str, Any], *, run_name: str, experiment: str | None, wait_poll: float | None
) -> int:
    """Submit the training pipeline and print the run's URL; with ``wait_poll`` (seconds between
    polls), wait for it and return 1 unless it succeeded."""

    def call(client: KfpClient) -> int:
        from ml_tasks.pipelines.pipeline import TRAINING, training_pipeline

        ir = compiled(training_pipeline())
        out = submit(client, TRAINING, ir, parameters, run_name=run_name, experiment=experiment)
        print(f"run {out['run_id']}: {out['url']}")
        if wait_poll is None:
            return 0
        run = wait(client, out["run_id"], poll=wait_poll)
        if run.get("state") == "SUCCEEDED":
            print(f"run {out['run_id']} succeeded")
            return 0
        print(f"error: run {out['run_id']} {run.get('state')}: {run_error(run)}", file=sys.stderr)
        return 1

    return kfp_exit_code(call)


def submit_step(
    step: str,
    arguments: Sequence[str],
    *,
    run_name: str,
    context_json: str,
    experiment: str | None,
) -> int:
    """Submit one step's one-step pipeline; print its ids and URL as one JSON line."""

    def call(client: KfpClient) -> int:
        from ml_tasks.pipelines.pipeline import step_pipeline

        params = {"arguments": list(arguments), "context_json": context_json}
        ir = compiled(step_pipeline(step))
        name = f"flywheel-step-{step.replace('_', '-')}"
        print(
            json.dumps(submit(client, name, ir, params, run_name=run_name, experiment=experiment))
        )
        return 0

    return kfp_exit_code(call)


def print_result(run_id: str, task: str) -> int:
    """Print the result step ``task`` of run ``run_id`` stored in the lake (3: none stored)."""
    from ml_tasks.pipelines.runtime import read_result

    found = read_result(run_id, task)
    if found is None:
        print(f"error: run {run_id} stored no result for {task}", file=sys.stderr)
        return EXIT_STEP_ERROR
    print(json.dumps(found, default=str))
    return 0
