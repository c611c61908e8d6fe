"""The pipelines, built from code and compiled to KFP IR YAML (never edited by hand).

- ``flywheel-training``: prepare → checks → train → validate, with the training DAG's
  parameters. What a data scientist submits, and what ``kfp.local`` runs on one machine.
- ``flywheel-step-<step>``: one step as its CLI runs it; the Airflow ``kubeflow`` backend runs
  each DAG task as one run of it, so every gate stays in Airflow.

Every component names the steps image (``FLYWHEEL_STEPS_IMAGE``, default
``harbor.flywheel.local/flywheel/steps:<FLYWHEEL_IMAGE_TAG>``: the image the ``kubernetes``
backend runs), which has kfp installed (no pip install at start), takes its settings from the
``flywheel-config`` ConfigMap and its credentials from the MLflow and S3 Secrets, and is pulled
with the Harbor pull secret. The Kubernetes part is written into the IR's platform spec in the
shape kfp-kubernetes writes it (kfp-kubernetes is not in the lock; a test compares the two).
Caching is off: train and validate write to MLflow and the registry, and a cached prepare would
not see a changed ``params.yaml``.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml_tasks.core import cluster
from ml_tasks.pipelines import components

TRAINING = "flywheel-training"
STEP_RESOURCES = {  # the kubernetes backend's figures (plugins/.../backends/kubernetes.py)
    "train": ("2", "4", "4G", "8G"),
    "validate": ("1", "2", "2G", "4G"),
    "prepare": ("1", "2", "2G", "4G"),
}
DEFAULT_RESOURCES = ("250m", "1", "512M", "2G")
CONFIG_KEYS = (
    "FLYWHEEL_LAKE_URI",
    "MLFLOW_TRACKING_URI",
    "FLYWHEEL_DVC_REMOTE",
    "AWS_ENDPOINT_URL",
)
SECRET_KEYS = {
    "mlflow": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
}


@dataclass(frozen=True)
class ImageSettings:
    """The image the components run in and the Kubernetes objects they use."""

    image: str = field(default_factory=cluster.steps_image)
    pull_secret: str = field(default_factory=cluster.image_pull_secret)
    mlflow_secret: str = field(default_factory=cluster.mlflow_secret)
    s3_secret: str = field(default_factory=cluster.s3_secret)
    config_map: str = field(default_factory=cluster.config_map)


def kubernetes_config(s: ImageSettings) -> dict[str, Any]:
    """A task's ``platform_config['kubernetes']``, as kfp-kubernetes 2.17 writes it."""

    def const(name: str) -> dict[str, Any]:
        return {"runtimeValue": {"constant": name}}

    secrets = ((s.mlflow_secret, SECRET_KEYS["mlflow"]), (s.s3_secret, SECRET_KEYS["s3"]))
    return {
        "secretAsEnv": [
            {
                "secretName": name,
                "keyToEnv": [{"secretKey": k, "envVar": k} for k in keys],
                "optional": False,
                "secretNameParameter": const(name),
            }
            for name, keys in secrets
        ],
        "imagePullSecret": [
            {"secretName": s.pull_secret, "secretNameParameter": const(s.pull_secret)}
        ],
        "configMapAsEnv": [
            {
                "configMapName": s.config_map,
                "keyToEnv": [{"configMapKey": k, "envVar": k} for k in CONFIG_KEYS],
                "configMapNameParameter": const(s.config_map),
                # A key the installation does not set (AWS_ENDPOINT_URL off MinIO) is fine.
                "optional": True,
            }
        ],
    }


def _component(func: Callable[..., Any], s: ImageSettings) -> Any:
    from kfp import dsl

    return dsl.component(func, base_image=s.image, install_kfp_package=False)


def _configure(task: Any, step: str, s: ImageSettings) -> Any:
    cpu, cpu_limit, memory, memory_limit = STEP_RESOURCES.get(step, DEFAULT_RESOURCES)
    task.set_caching_options(False)
    task.set_cpu_request(cpu).set_cpu_limit(cpu_limit)
    task.set_memory_request(memory).set_memory_limit(memory_limit)
    # FLYWHEEL_HOME and HOME move under /tmp in a pod (runtime.apply_context), not here:
    # kfp.local applies a container's env to its subprocess too.
    task.set_env_variable("PYTHONUNBUFFERED", "1")
    task.set_display_name(step)
    task.platform_config["kubernetes"] = kubernetes_config(s)
    return task


def training_pipeline(settings: ImageSettings | None = None) -> Any:
    """The chain as a kfp pipeline function (decorated; call ``kfp.compiler`` or kfp.local)."""
    from kfp import dsl

    s = settings or ImageSettings()
    prepare_c, checks_c = _component(components.prepare_op, s), _component(components.checks_op, s)
    train_c, validate_c = _component(components.train_op, s), _component(components.validate_op, s)
    job = dsl.PIPELINE_JOB_ID_PLACEHOLDER

    @dsl.pipeline(name=TRAINING, description="Flywheel: prepare, checks, train, validate")
    def flywheel_training(
        dataset_version: str = "",
        epochs: int = 0,
        learning_rate: float = 0.0,
        min_improvement: float = -1.0,
        force_register: bool = False,
        caller_run_id: str = "",
        context_json: str = "{}",
    ) -> dict:
        ids = {"kfp_run_id": job, "context_json": context_json}
        prepared = _configure(prepare_c(dataset_version=dataset_version, **ids), "prepare", s)
        checked = _configure(checks_c(prepared=prepared.output, **ids), "checks", s)
        trained = _configure(
            train_c(
                prepared=prepared.output,
                checked=checked.output,
                epochs=epochs,
                learning_rate=learning_rate,
                caller_run_id=caller_run_id,
                **ids,
            ),
            "train",
            s,
        )
        validated = _configure(
            validate_c(
                trained=trained.output,
                min_improvement=min_improvement,
                force_register=force_register,
                caller_run_id=caller_run_id,
                **ids,
            ),
            "validate",
            s,
        )
        return validated.output

    return flywheel_training


def step_pipeline(step: str, settings: ImageSettings | None = None) -> Any:
    """One step (``python -m ml_tasks.<step> ARGS``) as a one-component pipeline."""
    from kfp import dsl

    s = settings or ImageSettings()
    step_c = _component(components.step_op, s)

    @dsl.pipeline(name=f"flywheel-step-{step.replace('_', '-')}")
    def flywheel_step(arguments: list = [], context_json: str = "{}") -> None:  # noqa: B006
        task = step_c(
            step=step,
            arguments=arguments,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            context_json=context_json,
        )
        _configure(task, step, s)

    return flywheel_step


def compile_pipeline(pipeline_func: Any, path: Path) -> Path:
    """Compile to IR YAML at ``path`` (written beside it, then moved into place)."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.yaml")
    compiler.Compiler().compile(pipeline_func, str(tmp))
    tmp.replace(path)
    return path
