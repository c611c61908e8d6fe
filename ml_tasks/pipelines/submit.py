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

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
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


def add_submit_parsers(
    sub: Any, add_training_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    run = sub.add_parser("submit", help="submit the training pipeline to Kubeflow")
    add_training_options(run)
    run.add_argument("--experiment", help="default: FLYWHEEL_KFP_EXPERIMENT or flywheel")
    run.add_argument("--run-name", default="flywheel-training")
    run.add_argument("--wait", action="store_true", help="wait; exit 1 unless it succeeded")
    run.add_argument("--poll", type=float, default=5.0, help="seconds between polls (--wait)")
    step = sub.add_parser("submit-step", help="submit one step (the Airflow backend's call)")
    step.add_argument("step")
    step.epilog = "The step's own arguments follow a `--`."
    step.add_argument("--run-name", required=True)
    step.add_argument("--context-json", default="{}", help="the caller's ids (AIRFLOW_CTX_*)")
    step.add_argument("--experiment")
    result = sub.add_parser("result", help="print the stored result of a step of a run")
    result.add_argument("run_id")
    result.add_argument("--task", required=True, help="the step (prepare, train, ...)")


def run_submit_command(args: argparse.Namespace, parameters: dict[str, Any]) -> int:
    if args.command == "result":
        from ml_tasks.pipelines.runtime import read_result

        found = read_result(args.run_id, args.task)
        if found is None:
            print(f"error: run {args.run_id} stored no result for {args.task}", file=sys.stderr)
            return EXIT_STEP_ERROR
        print(json.dumps(found, default=str))
        return 0
    try:
        client = KfpClient(KfpSettings())
        if args.command == "submit-step":
            from ml_tasks.pipelines.pipeline import step_pipeline

            params = {"arguments": list(args.arguments), "context_json": args.context_json}
            ir = compiled(step_pipeline(args.step))
            name = f"flywheel-step-{args.step.replace('_', '-')}"
            out = submit(
                client, name, ir, params, run_name=args.run_name, experiment=args.experiment
            )
            print(json.dumps(out))
            return 0
        from ml_tasks.pipelines.pipeline import TRAINING, training_pipeline

        ir = compiled(training_pipeline())
        out = submit(
            client, TRAINING, ir, parameters, run_name=args.run_name, experiment=args.experiment
        )
        print(f"run {out['run_id']}: {out['url']}")
        if not args.wait:
            return 0
        run = wait(client, out["run_id"], poll=args.poll)
        if run.get("state") == "SUCCEEDED":
            print(f"run {out['run_id']} succeeded")
            return 0
        print(f"error: run {out['run_id']} {run.get('state')}: {run_error(run)}", file=sys.stderr)
        return 1
    except KfpUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFRASTRUCTURE
    except KfpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
