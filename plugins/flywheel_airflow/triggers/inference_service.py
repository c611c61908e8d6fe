"""Wait for a KServe InferenceService to serve a given model version, on the triggerer.

A rollout takes minutes (image pull, model download, readiness probe); holding a worker slot
for it would starve the cluster's Airflow, so the deploy task defers to this trigger, which
polls the object with the async Kubernetes client and fires one event:
``{"status": "ready" | "failed" | "timeout", "message": ..., "name", "namespace"}``.

:func:`readiness` holds the decision (pure, unit-tested with recorded objects): ready means the
controller has seen this generation, the ``Ready`` condition is ``True`` and the object carries
the expected model version; a predictor that failed to load its model is a failure at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import TriggerEvent

from flywheel_airflow.triggers.state import FieldsTrigger

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
VERSION_ANNOTATION = "flywheel.io/model-version"
FAILED_MODEL_STATES = {"FailedToLoad"}


def readiness(obj: dict[str, Any] | None, model_version: str) -> tuple[str, str]:
    """``("ready" | "failed" | "pending", why)`` for an InferenceService as the API returns it."""
    if obj is None:
        return "pending", "the InferenceService does not exist (yet)"
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    serving = (meta.get("annotations") or {}).get(VERSION_ANNOTATION)
    if serving != str(model_version):
        return "pending", f"the object describes model version {serving}, not {model_version}"
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and (observed is None or observed < generation):
        return "pending", f"controller has not seen generation {generation} yet (at {observed})"
    model_state = (status.get("modelStatus") or {}).get("states") or {}
    if model_state.get("targetModelState") in FAILED_MODEL_STATES:
        failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
        return "failed", f"model failed to load: {failure.get('message') or failure.get('reason')}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            if condition.get("status") == "True":
                return "ready", f"Ready at {status.get('url') or 'the cluster'}"
            return (
                "pending",
                f"Ready={condition.get('status')}: {condition.get('reason')} "
                f"{condition.get('message') or ''}".strip(),
            )
    return "pending", "no Ready condition yet"


@dataclass(kw_only=True, eq=False, repr=False)
class InferenceServiceReadyTrigger(FieldsTrigger):
    """Poll an InferenceService until it serves ``model_version``, fails, or time runs out."""

    name: str
    namespace: str
    model_version: str
    kubernetes_conn_id: str | None = "kubernetes_default"
    timeout_seconds: float = 900
    poll_interval: float = 10
    # Wall-clock deadline, so a triggerer restart does not extend the wait.
    deadline: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.model_version = str(self.model_version)
        if self.deadline is None:
            self.deadline = time.time() + self.timeout_seconds

    async def get_object(self) -> dict[str, Any] | None:
        """The InferenceService as a dict, or None while it does not exist."""
        from airflow.providers.cncf.kubernetes.hooks.kubernetes import AsyncKubernetesHook
        from kubernetes_asyncio.client import CustomObjectsApi
        from kubernetes_asyncio.client.exceptions import ApiException

        hook = AsyncKubernetesHook(conn_id=self.kubernetes_conn_id)
        async with hook.get_conn() as api_client:
            try:
                obj: dict[str, Any] = await CustomObjectsApi(
                    api_client
                ).get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
                return obj
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise

    def _event(self, status: str, message: str) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "message": message,
                "name": self.name,
                "namespace": self.namespace,
                "model_version": self.model_version,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        why, deadline = "not polled yet", self.deadline
        assert deadline is not None  # set in __post_init__
        while time.time() < deadline:
            state, why = readiness(await self.get_object(), self.model_version)
            self.log.info("InferenceService %s/%s: %s (%s)", self.namespace, self.name, state, why)
            if state in ("ready", "failed"):
                yield self._event(state, why)
                return
            await asyncio.sleep(self.poll_interval)
        yield self._event("timeout", f"not ready after {self.timeout_seconds:.0f}s: {why}")
