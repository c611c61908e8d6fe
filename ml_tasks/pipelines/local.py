"""Run the compiled training pipeline on this machine with ``kfp.local`` (no cluster).

The IR YAML is compiled, read back and executed by kfp.local's orchestrator with the
``SubprocessRunner`` in this interpreter (``use_venv=False``: the steps environment is the
image's), on the embedded default or whatever ``FLYWHEEL_*``/``MLFLOW_TRACKING_URI`` name. The
Kubernetes platform spec (Secrets, pull secret) has no meaning here and is not used.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ml_tasks.core.settings import load_settings


class LocalRunFailed(RuntimeError):
    """kfp.local reported the pipeline failed."""


def load_spec(path: Path) -> Any:
    """A compiled IR YAML file as a ``PipelineSpec`` proto (the first document)."""
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    document = next(iter(yaml.safe_load_all(path.read_text())))
    return json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())


def run_ir(path: Path, arguments: dict[str, Any], *, pipeline_root: Path) -> dict[str, Any]:
    """Execute compiled IR with kfp.local; returns the pipeline's outputs."""
    from kfp import local
    from kfp.local import pipeline_orchestrator

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=True,
    )
    try:
        outputs: dict[str, Any] = pipeline_orchestrator.run_local_pipeline(
            load_spec(path), arguments
        )
    except RuntimeError as exc:
        raise LocalRunFailed(str(exc)) from exc
    return outputs


def materialize() -> str:
    """The dataset in the work tree (as ``make chain`` does); returns its version."""
    done = subprocess.run(
        [sys.executable, "-m", "ml_tasks.dataset", "materialize"], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise LocalRunFailed("materializing the dataset failed")
    return str(json.loads(done.stdout)["dataset_version"])


def run_training_locally(arguments: dict[str, Any]) -> dict[str, Any]:
    """Compile the training pipeline and run it end to end on this machine."""
    from ml_tasks.pipelines.pipeline import compile_pipeline, training_pipeline

    settings = load_settings()
    if not arguments.get("dataset_version"):
        arguments = {**arguments, "dataset_version": materialize()}
    with tempfile.TemporaryDirectory(prefix="flywheel-kfp-") as tmp:
        ir = compile_pipeline(training_pipeline(), Path(tmp) / "training.yaml")
        outputs = run_ir(ir, arguments, pipeline_root=settings.home / "kfp-local")
    return dict(outputs.get("Output") or outputs)
