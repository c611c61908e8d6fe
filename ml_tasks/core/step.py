"""The step contract: a typed function, a thin CLI, one JSON result.

Every step (``python -m ml_tasks.<step>``) runs through :func:`run_step`, which configures the
event log, records start and end, and writes the step's result as one small JSON document to
``--result-path``. Inside a pod that path defaults to ``/airflow/xcom/return.json``, where
KubernetesPodOperator's XCom sidecar reads it; elsewhere the result is also printed last on
stdout. Expected failures (:class:`StepError`: bad data, a failed check) end the process with
exit code 3 and a clear message on stderr, which tells the orchestrator not to retry. A service
the step needs that does not answer (:class:`InfrastructureError`: the MLflow server is down)
exits 75, ``EX_TEMPFAIL`` in ``sysexits.h``: the same run may succeed later, so retry it; its
``failed`` event and JSON result (``status: failed``, ``retry: true``) say what was unreachable.
Usage errors exit 2 (:mod:`ml_tasks.core.command`); a crash exits 1 and may be retried.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TypeAlias

from ml_tasks.core import events
from ml_tasks.core.exit_codes import EXIT_INFRASTRUCTURE, EXIT_STEP_ERROR

POD_RESULT_PATH = Path("/airflow/xcom/return.json")

# What a step's function returns: a typed result (a dataclass instance) or a plain mapping;
# either way one small JSON document.
StepResult: TypeAlias = Any


def result_fields(out: StepResult) -> dict[str, Any]:
    """A step's result as the fields of its JSON document."""
    if is_dataclass(out) and not isinstance(out, type):
        return asdict(out)
    return dict(out)


class StepError(Exception):
    """A failure the user can act on: bad data, a failed check, a missing model."""


class InfrastructureError(Exception):
    """A service the step needs did not answer: nothing is wrong with the input, retry later.

    ``details`` (JSON-serialisable ids such as the unreachable URI) go into the ``failed`` event
    and the step's result, so an orchestrator or a person sees what to check without a log dive.
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path`` and move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def default_result_path() -> Path | None:
    return POD_RESULT_PATH if POD_RESULT_PATH.parent.is_dir() else None


def run_step(
    component: str,
    body: Callable[[], StepResult],
    *,
    result_path: Path | None,
    context: Mapping[str, Any] | None = None,
) -> int:
    """Run ``body`` as step ``component`` and hand back its result; returns the exit code."""
    events.configure(component)
    started = time.monotonic()
    events.emit("started", **(context or {}))
    try:
        result = result_fields(body())
    except StepError as exc:
        events.emit("failed", level="error", error=str(exc), **(context or {}))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STEP_ERROR
    except InfrastructureError as exc:
        seconds = round(time.monotonic() - started, 3)
        failure = {
            "status": "failed",
            "retry": True,
            "error": str(exc),
            **exc.details,
            "seconds": seconds,
        }
        events.emit("failed", level="error", **{**(context or {}), **failure})
        # Written even though the step failed: the result is where an orchestrator (or the
        # XCom sidecar) looks, and "what was unreachable" is what it needs to decide.
        if result_path is not None:
            write_json_atomic(result_path, failure)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFRASTRUCTURE
    result.setdefault("status", "ok")
    seconds = round(time.monotonic() - started, 3)
    result["seconds"] = seconds
    events.emit("finished", outcome=result["status"], seconds=seconds, **(context or {}))
    if result_path is not None:
        write_json_atomic(result_path, result)
    print(json.dumps(result, default=str))
    return 0
