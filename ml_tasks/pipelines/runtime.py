"""What runs inside a pipeline component: a step's typed function under the step contract.

A component calls :func:`run_component` with the step's body. The body runs through
:func:`ml_tasks.core.step.run_step` (events, exit codes), then the result is stored in the lake
under ``kubeflow/runs/<KFP run id>/<task>.json``, where the Airflow backend reads a step's result
(a parameter output lives in KFP's metadata store, which its REST API does not hand out). A failed
step raises :class:`ComponentFailed` naming its exit code (3: bad input, 75: a service did not
answer), which becomes the KFP run's error. No kfp import: the steps call this directly too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ml_tasks.core.exit_codes import EXIT_INFRASTRUCTURE, EXIT_STEP_ERROR
from ml_tasks.core.lake import open_lake
from ml_tasks.core.settings import load_settings
from ml_tasks.core.step import StepError, StepResult, run_step

MEANING = {
    EXIT_STEP_ERROR: "bad input, do not retry",
    EXIT_INFRASTRUCTURE: "a service did not answer, retry",
}
KFP_RUN_TAG = "flywheel.kfp_run_id"


class ComponentFailed(RuntimeError):
    """A step failed inside a component; ``exit_code`` follows the step contract."""

    def __init__(self, step: str, exit_code: int, error: str) -> None:
        meaning = MEANING.get(exit_code, "crashed")
        super().__init__(f"step {step} exited {exit_code} ({meaning}): {error}")
        self.exit_code = exit_code


def result_key(kfp_run_id: str, task: str) -> str:
    return f"kubeflow/runs/{kfp_run_id}/{task}.json"


def store_result(kfp_run_id: str, task: str, result: Mapping[str, Any]) -> None:
    lake = open_lake(load_settings().lake_uri)
    lake.write_bytes(result_key(kfp_run_id, task), json.dumps(result, default=str).encode())


def read_result(kfp_run_id: str, task: str) -> dict[str, Any] | None:
    """A component's stored result, or None when the component never stored one."""
    lake = open_lake(load_settings().lake_uri)
    key = result_key(kfp_run_id, task)
    if not lake.exists(key):
        return None
    loaded: dict[str, Any] = json.loads(lake.read_bytes(key))
    return loaded


def apply_context(context_json: str) -> None:
    """Set the caller's ids (``AIRFLOW_CTX_*``) a step stamps on events and lineage tags.

    In a KFP pod (the launcher sets ``KFP_POD_NAME``) the state folder and ``HOME`` go under
    ``/tmp``, the one writable place, as in the ``kubernetes`` backend's pods.
    """
    if os.environ.get("KFP_POD_NAME"):
        os.environ.setdefault("FLYWHEEL_HOME", "/tmp/flywheel")
        os.environ.update(HOME="/tmp", MPLCONFIGDIR="/tmp/matplotlib")
    for name, value in (json.loads(context_json or "{}") or {}).items():
        if str(name).startswith(("AIRFLOW_CTX_", "FLYWHEEL_")):
            os.environ[str(name)] = str(value)


def run_component(
    step: str,
    body: Callable[[], StepResult],
    *,
    kfp_run_id: str,
    task: str | None = None,
) -> dict[str, Any]:
    """Run ``body`` as step ``step``; store and return its result, or raise ComponentFailed."""
    error: dict[str, str] = {}

    def guarded() -> StepResult:
        try:
            return body()
        except StepError as exc:
            error["error"] = str(exc)
            raise

    with tempfile.TemporaryDirectory(prefix=f"flywheel-kfp-{step}-") as tmp:
        path = Path(tmp) / "result.json"
        code = run_step(step, guarded, result_path=path, context={"kfp_run_id": kfp_run_id})
        result = json.loads(path.read_text()) if path.exists() else {"status": "failed", **error}
    return finish(step, code, result, kfp_run_id=kfp_run_id, task=task)


def run_cli(step: str, main: Callable[[list[str]], int], arguments: list[str], **kw: Any) -> Any:
    """Run a step's CLI ``main(ARGS --result-path P)`` (the one-step pipeline's component)."""
    with tempfile.TemporaryDirectory(prefix=f"flywheel-kfp-{step}-") as tmp:
        path = Path(tmp) / "result.json"
        code = main([*arguments, "--result-path", str(path)])
        result = json.loads(path.read_text()) if path.exists() else {"status": "failed"}
    if code and "error" not in result:
        result["error"] = f"exit code {code}; the component's log has the step's message"
    return finish(step, code, result, **kw)


def finish(
    step: str, code: int, result: dict[str, Any], *, kfp_run_id: str, task: str | None
) -> dict[str, Any]:
    result = {**result, "exit_code": code, "kfp_run_id": kfp_run_id}
    store_result(kfp_run_id, task or step, result)
    if code != 0:
        raise ComponentFailed(step, code, str(result.get("error", "see the component's log")))
    tag_kfp_run(step, result, kfp_run_id)
    return result


def tag_kfp_run(step: str, result: Mapping[str, Any], kfp_run_id: str) -> None:
    """Tag what a step made with its KFP run id: train's MLflow run, the version validate
    registered (later steps that name them, such as deploy, leave the tags alone)."""
    run_id = result.get("mlflow_run_id") if step == "train" else None
    version = (
        result.get("model_version") if step == "validate" and result.get("registered") else None
    )
    if not run_id and not version:
        return
    from mlflow import MlflowClient

    from ml_tasks.model.tracking import use_mlflow

    settings = load_settings()
    use_mlflow(settings)
    client = MlflowClient()
    if run_id:
        client.set_tag(str(run_id), KFP_RUN_TAG, kfp_run_id)
    if version:
        client.set_model_version_tag(settings.model_name, str(version), KFP_RUN_TAG, kfp_run_id)
