"""Deploy on the cluster: KServe serves the new version before ``champion`` moves to it.

:func:`start_cluster_deploy` applies the InferenceService for the approved version and defers
the task to :class:`InferenceServiceReadyTrigger`, so no worker slot is held while KServe rolls
out. :func:`finish_cluster_deploy` resumes it: once the service is Ready, the ``deploy promote``
step moves ``champion`` (in a pod, as every step on this backend); otherwise, or when moving
``champion`` fails, the previous InferenceService is put back and the task fails, so what is
served and what ``champion`` names never disagree.
"""

from __future__ import annotations

import os
from typing import Any

from flywheel_airflow.backends.kubernetes import PodSettings, run_step_pod

RESUME_METHOD = "execute_deployed"


def custom_objects(conn_id: str) -> Any:
    """The Kubernetes API for custom resources, through Airflow's Kubernetes connection."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes import client

    return client.CustomObjectsApi(KubernetesHook(conn_id=conn_id).api_client)


def restorable(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """What to re-apply to restore an InferenceService (no status, no server-set metadata)."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "labels", "annotations") if k in meta
        },
        "spec": obj.get("spec"),
    }


def apply_inference_service(api: Any, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Create or replace the InferenceService; returns the previous one (restorable) or None."""
    from kubernetes.client.exceptions import ApiException

    from flywheel_airflow.triggers.inference_service import GROUP, PLURAL, VERSION

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        current = None
    if current is None:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    else:
        body = {
            **manifest,
            "metadata": {
                **manifest["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
        }
        api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body)
    return restorable(current)


def restore_inference_service(
    api: Any, manifest: dict[str, Any], previous: dict[str, Any] | None
) -> str:
    """Put back what served before: the previous object, or nothing if there was none."""
    from flywheel_airflow.triggers.inference_service import GROUP, PLURAL, VERSION

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    if previous is None:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return f"deleted {namespace}/{name} (nothing served before)"
    apply_inference_service(api, previous)
    version = (previous["metadata"].get("annotations") or {}).get("flywheel.io/model-version")
    return f"restored {namespace}/{name} to model version {version}"


def start_cluster_deploy(op: Any, *, model_version: int, canary_percent: int | None) -> None:
    """Apply the InferenceService for ``model_version``, then defer ``op`` until it is Ready.

    ``op`` resumes in its ``execute_deployed``, which calls :func:`finish_cluster_deploy`.
    """
    from flywheel_airflow.triggers.inference_service import InferenceServiceReadyTrigger
    from ml_tasks.serving.inference_service import (
        ServingOptions,
        render_inference_service,
        validate_inference_service,
    )

    manifest = render_inference_service(
        os.environ.get("FLYWHEEL_MODEL_NAME", "digits"),
        str(model_version),
        ServingOptions.from_env(canary_traffic_percent=canary_percent),
    )
    validate_inference_service(manifest)
    settings = PodSettings()
    previous = apply_inference_service(custom_objects(settings.kubernetes_conn_id), manifest)
    op.log.info(
        "Applied InferenceService %s/%s for v%s; waiting for Ready",
        manifest["metadata"]["namespace"],
        manifest["metadata"]["name"],
        model_version,
    )
    op.defer(
        trigger=InferenceServiceReadyTrigger(
            name=manifest["metadata"]["name"],
            namespace=manifest["metadata"]["namespace"],
            model_version=str(model_version),
            kubernetes_conn_id=settings.kubernetes_conn_id,
            timeout_seconds=float(os.environ.get("FLYWHEEL_DEPLOY_TIMEOUT_SECONDS", "900")),
        ),
        method_name=RESUME_METHOD,
        kwargs={"manifest": manifest, "previous": previous},
    )


def finish_cluster_deploy(
    op: Any,
    context: Any,
    event: dict[str, Any],
    manifest: dict[str, Any],
    previous: dict[str, Any] | None,
) -> Any:
    """Ready: move champion (``op``'s promote step, in a pod). Otherwise restore and fail."""
    from airflow.sdk.exceptions import AirflowException

    api = custom_objects(PodSettings().kubernetes_conn_id)
    if event.get("status") != "ready":
        restored = restore_inference_service(api, manifest, previous)
        raise AirflowException(
            f"InferenceService not ready ({event.get('status')}: "
            f"{event.get('message')}); champion unchanged; {restored}"
        )
    try:
        return run_step_pod(op.step, op.arguments, context, task_id=op.task_id)
    except AirflowException:
        op.log.error(
            "Moving champion failed; %s", restore_inference_service(api, manifest, previous)
        )
        raise
