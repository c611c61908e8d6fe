"""Every 4xx the service answers: one shape (``{"error": ...}``), one log line, one count.

A refusal can happen in four places: :class:`~ml_tasks.serving.http.RequestGuard` (content
type, body size, not JSON, unknown v2 fields, a method the predict routes do not take),
FastAPI (a v2 body that does not fit the protocol), KServe (not JSON in v1, an unknown model)
and the predictor (:class:`RefusedInput`). Counting in each of them misses the ones nobody
remembered, so the guard counts every 4xx response it sends on
(``flywheel_serve_refused_total{model_name, status, reason}``); the handlers below only leave
the reason in a slot the guard put in the request's scope. A 4xx without a reason is counted by
its status (``not_found``, ``http_4xx``). Client errors are logged as one line, not a traceback:
they are not the service's failures.
"""

from __future__ import annotations

from typing import Any

from kserve.errors import InvalidInput

REASON_SLOT = "flywheel.refusal"
"""Scope key of a one-item list the guard reads after the response: the refusal's reason."""
DEFAULT_REASONS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "wrong_content_type",
    422: "invalid_request",
}


class RefusedInput(InvalidInput):
    """KServe's 400 with a reason code (a metric label) beside the message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def default_reason(status: int) -> str:
    return DEFAULT_REASONS.get(status, f"http_{status}")


def note_reason(request: Any, reason: str) -> None:
    """Leave ``reason`` for the guard to count (a no-op outside the guard, e.g. in tests)."""
    slot = request.scope.get(REASON_SLOT)
    if slot is not None:
        slot[0] = reason


def _log(request: Any, status: int, message: Any) -> None:
    from kserve.logging import logger

    logger.info("%d for %s %s: %s", status, request.method, request.url.path, message)


async def bad_input_as_400(request: Any, exc: Any) -> Any:
    """A 400 with the message and one log line (KServe logs a traceback per bad request)."""
    from fastapi.responses import JSONResponse

    if isinstance(exc, RefusedInput):
        reason = exc.code
    elif str(exc).startswith("Unrecognized request format"):  # KServe's v1 JSON parse failing
        reason = "not_json"
    else:
        reason = "invalid_input"
    note_reason(request, reason)
    _log(request, 400, exc)
    return JSONResponse(status_code=400, content={"error": str(exc)})


async def validation_error_as_400(request: Any, exc: Any) -> Any:
    """FastAPI's 422 for a v2 body that does not fit the protocol, as a 400 of the same shape."""
    problems = [
        f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'body'}: {err.get('msg')}"
        for err in exc.errors()[:5]
    ]
    return await bad_input_as_400(
        request,
        RefusedInput("invalid_request", "invalid inference request: " + "; ".join(problems)),
    )


async def unknown_model_as_404(request: Any, exc: Any) -> Any:
    """KServe's 404 for a model this server does not serve, logged as one line, not a traceback."""
    from fastapi.responses import JSONResponse

    note_reason(request, "unknown_model")
    _log(request, 404, exc)
    return JSONResponse(status_code=404, content={"error": str(exc)})
