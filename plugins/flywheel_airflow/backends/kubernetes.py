"""The ``kubernetes`` backend: run a step as a pod in the steps image.

:func:`build_step_pod` turns a step into a KubernetesPodOperator running exactly the command
the ``local`` backend runs (``python -m ml_tasks.<step> ARGS``), hardened for a shared cluster:

- the image from Harbor (``FLYWHEEL_STEPS_IMAGE``, default
  ``harbor.flywheel.local/flywheel/steps:<FLYWHEEL_IMAGE_TAG>``), pulled with the
  ``FLYWHEEL_IMAGE_PULL_SECRET`` (default ``harbor-pull``);
- non-root, no privilege escalation, every capability dropped, a read-only root file system
  (``/tmp`` is an ``emptyDir``, ``HOME`` and ``FLYWHEEL_HOME`` live there), seccomp default;
- credentials only from Kubernetes Secrets (``envFrom``: the MLflow secret and the S3 secret),
  settings from a ConfigMap (``flywheel-config``: lake URI, tracking URI, DVC remote);
- requests and limits per step (training gets more);
- the step writes its JSON result to ``/airflow/xcom/return.json`` (its default in a pod), which
  the XCom sidecar hands back as the task's XCom (``do_xcom_push=True``).

:func:`run_in_pod` runs it; a pod whose step exited 3 (bad input) fails the task without retry,
and one that exited 75 (a service such as MLflow did not answer) fails this try only, as on the
local backend. Deploying waits for KServe first (:mod:`flywheel_airflow.backends.cluster_deploy`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flywheel_airflow.invocation import airflow_env, step_command
from ml_tasks.core import cluster
from ml_tasks.core.exit_codes import EXIT_INFRASTRUCTURE, EXIT_STEP_ERROR

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

RUN_AS = 1000
STEP_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "train": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
    "validate": {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    },
    "prepare": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
}
DEFAULT_RESOURCES = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}


@dataclass(frozen=True)
class PodSettings:
    """Where and how step pods run; every field has an environment variable."""

    namespace: str = field(
        default_factory=lambda: cluster.env_or("FLYWHEEL_STEPS_NAMESPACE", "flywheel")
    )
    image: str = field(default_factory=cluster.steps_image)
    image_pull_secret: str = field(default_factory=cluster.image_pull_secret)
    secrets: tuple[str, ...] = field(
        default_factory=lambda: (cluster.mlflow_secret(), cluster.s3_secret())
    )
    config_map: str = field(default_factory=cluster.config_map)
    service_account: str = field(
        default_factory=lambda: cluster.env_or("FLYWHEEL_STEPS_SERVICE_ACCOUNT", "flywheel-steps")
    )
    kubernetes_conn_id: str = field(
        default_factory=lambda: cluster.env_or("FLYWHEEL_KUBERNETES_CONN_ID", "kubernetes_default")
    )
    # The XCom sidecar only needs a shell: the steps image (from the registry, already on the
    # node for the step) rather than the provider's default, alpine from Docker Hub.
    xcom_sidecar_image: str = field(
        default_factory=lambda: cluster.env_or("FLYWHEEL_XCOM_SIDECAR_IMAGE", "")
    )
    label_studio_secret: str = field(
        default_factory=lambda: cluster.env_or("FLYWHEEL_LABEL_STUDIO_SECRET", "label-studio-admin")
    )
    git_secret: str = field(
        default_factory=lambda: cluster.env_or("FLYWHEEL_GIT_SECRET", "flywheel-git")
    )


def step_secrets(step: str, s: PodSettings) -> tuple[list[Any], list[Any]]:
    """The credentials a step needs besides MLflow and S3, as (env, envFrom) from Secrets:
    the Label Studio token for the steps that call Label Studio, and the git login, token and
    URL (FLYWHEEL_GIT_USER, FLYWHEEL_GIT_TOKEN, FLYWHEEL_GIT_URL) for ingest, which commits and
    pushes dataset versions. The local backend gets the same names from Airflow Connections."""
    from kubernetes.client import models as k8s

    if step == "annotation.tasks":
        token = k8s.V1SecretKeySelector(name=s.label_studio_secret, key="token")
        return [
            k8s.V1EnvVar(
                name="LABEL_STUDIO_API_KEY", value_from=k8s.V1EnvVarSource(secret_key_ref=token)
            )
        ], []
    if step == "annotation.ingest":
        return [], [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s.git_secret))]
    return [], []


def pod_env(context: Any) -> dict[str, str]:
    """Plain settings for the step (no secrets): its ids, and a writable home under /tmp."""
    return {
        **airflow_env(context),
        "FLYWHEEL_BACKEND": "kubernetes",
        "FLYWHEEL_HOME": "/tmp/flywheel",
        "HOME": "/tmp",
        "MPLCONFIGDIR": "/tmp/matplotlib",
        "PYTHONUNBUFFERED": "1",
    }


def build_step_pod(
    step: str,
    arguments: Sequence[str],
    context: Any,
    *,
    task_id: str | None = None,
    settings: PodSettings | None = None,
) -> KubernetesPodOperator:
    """The KubernetesPodOperator that runs ``python -m ml_tasks.<step> ARGS`` in a pod."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    s = settings or PodSettings()
    resources = STEP_RESOURCES.get(step, DEFAULT_RESOURCES)
    secret_env, secret_env_from = step_secrets(step, s)
    no_privileges = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    operator = KubernetesPodOperator(
        task_id=task_id or f"{step}_pod",
        name=f"flywheel-{step.replace('_', '-')}",
        namespace=s.namespace,
        image=s.image,
        image_pull_policy="IfNotPresent",
        image_pull_secrets=[k8s.V1LocalObjectReference(name=s.image_pull_secret)],
        service_account_name=s.service_account,
        automount_service_account_token=False,
        cmds=["python"],
        arguments=step_command(step, arguments),
        env_vars=[
            *(k8s.V1EnvVar(name=k, value=v) for k, v in pod_env(context).items()),
            *secret_env,
        ],
        env_from=[
            k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=s.config_map)),
            *[
                k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name))
                for name in s.secrets
            ],
            *secret_env_from,
        ],
        container_resources=k8s.V1ResourceRequirements(
            requests=resources["requests"], limits=resources["limits"]
        ),
        security_context={
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        container_security_context=no_privileges,
        # The XCom sidecar must also run as non-root, or the pod never starts.
        xcom_sidecar_container_security_context=no_privileges,
        volumes=[k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="4Gi"))],
        volume_mounts=[k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],
        labels={"app.kubernetes.io/part-of": "flywheel", "flywheel.io/step": step},
        do_xcom_push=True,
        get_logs=True,
        # Keep failed pods: their exit code tells bad input (3, no retry) from a service that
        # did not answer (75, retry) and from a crash.
        on_finish_action="delete_succeeded_pod",
        kubernetes_conn_id=s.kubernetes_conn_id,
        startup_timeout_seconds=600,
    )
    sidecar_image = s.xcom_sidecar_image or s.image
    build_pod = operator.build_pod_request_obj

    def build_pod_with_our_sidecar(context: Any = None, **kwargs: Any) -> Any:
        pod = build_pod(context, **kwargs)
        for container in pod.spec.containers:
            if container.name == "airflow-xcom-sidecar":
                container.image = sidecar_image
        return pod

    # The provider takes the sidecar image only from the Kubernetes connection's extra; the
    # step's settings name it here instead, so it comes from the same registry as the step.
    operator.build_pod_request_obj = build_pod_with_our_sidecar  # type: ignore[method-assign]
    return operator


def _step_exit_code(kpo: Any) -> int | None:
    """The base container's exit code of the pod ``kpo`` ran, when it can still be read."""
    pod = getattr(kpo, "pod", None)
    if pod is None:
        return None
    try:
        pod = kpo.pod_manager.read_pod(pod)
    except Exception:  # the API is unreachable: the caller re-raises the original failure
        return None
    for status in (pod.status.container_statuses or []) if pod.status else []:
        if status.name == "base" and status.state and status.state.terminated:
            return int(status.state.terminated.exit_code)
    return None


def run_in_pod(op: Any, context: Any) -> Any:
    """Run ``op`` (a StepOperator) in a pod and return the step's JSON result."""
    return run_step_pod(op.step, op.arguments, context, task_id=op.task_id)


def run_step_pod(step: str, arguments: Sequence[str], context: Any, *, task_id: str) -> Any:
    """Run the step in a pod; its exit code decides between failing at once and a retry."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    kpo = build_step_pod(step, arguments, context, task_id=task_id)
    try:
        return kpo.execute(context)
    except AirflowException as exc:
        code = _step_exit_code(kpo)
        if code == EXIT_STEP_ERROR:
            raise AirflowFailException(f"step {step} refused its input: {exc}") from exc
        if code == EXIT_INFRASTRUCTURE:
            raise AirflowException(
                f"step {step} could not reach a service it needs (its log says which); a "
                f"retry may succeed: {exc}"
            ) from exc
        raise
