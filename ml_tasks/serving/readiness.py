"""Readiness that tells the truth, and says why not.

KServe's server readiness (``GET /v2/health/ready``) answers ready whenever the process runs,
and a model that is not ready gets a bare "Model with name digits is not ready." with a
traceback in the log per probe. A service that waits for its first champion must say it is not
ready, and why, to the prober and to a client alike:

- :class:`FlywheelDataPlane` makes the server ready only when every model it serves is;
- :func:`not_ready_handlers` answer 503 with the models' ``not_ready_reason``: on the readiness
  routes ``{"ready": false, "reason": ...}``; on the predict routes ``{"error": ..., "reason":
  ...}``, counted as ``flywheel_serve_requests_total{outcome="not_ready"}``. No log line: a
  prober asks every few seconds, and the reason changes only with the watcher's events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from kserve.errors import ModelNotReady, ServerNotReady
from kserve.protocol.dataplane import DataPlane

from ml_tasks.serving.metrics import serving_metrics

Handler = Callable[[Any, Any], Awaitable[Any]]


class FlywheelDataPlane(DataPlane):
    """KServe's data plane, ready only when every registered model is."""

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        if not models or not all([await model.healthy() for model in models]):
            return False
        ready: bool = await super().ready()
        return ready


def reason_of(model: Any) -> str:
    return getattr(model, "not_ready_reason", None) or "the model is not loaded yet"


def not_ready_handlers(dataplane: DataPlane) -> dict[type[Exception], Handler]:
    """Exception handlers for KServe's ``ModelNotReady`` and ``ServerNotReady``: 503 + reason."""
    from fastapi.responses import JSONResponse

    registry = dataplane.model_registry

    async def model_not_ready(request: Any, exc: Any) -> Any:
        model = registry.get_model(exc.model_name)
        reason = reason_of(model)
        path = request.url.path
        if request.method == "POST" and (path.endswith(":predict") or path.endswith("/infer")):
            protocol = "v1" if path.startswith("/v1/") else "v2"
            serving_metrics().requests.labels(exc.model_name, protocol, "not_ready").inc()
            body: dict[str, Any] = {
                "error": f"model {exc.model_name} is not ready: {reason}",
                "reason": reason,
            }
        else:
            body = {"name": exc.model_name, "ready": False, "reason": reason}
        return JSONResponse(status_code=503, content=body)

    async def server_not_ready(request: Any, exc: Any) -> Any:
        models = registry.get_models()
        reasons = [f"{name}: {reason_of(m)}" for name, m in models.items() if not m.ready]
        if len(models) == 1 and reasons:
            reasons = [reason_of(next(iter(models.values())))]
        reason = "; ".join(reasons) or "no model is registered"
        return JSONResponse(status_code=503, content={"ready": False, "reason": reason})

    return {ModelNotReady: model_not_ready, ServerNotReady: server_not_ready}
