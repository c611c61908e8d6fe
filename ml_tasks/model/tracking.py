"""MLflow set-up shared by the steps: where runs go, the lineage every run carries, and what
happens when the tracking server does not answer.

MLflow retries each HTTP request itself (urllib3's ``Retry``) with settings read from the
environment at every request. Its defaults (7 retries, backoff factor 2, 120 s per attempt)
keep a step silent for about 4 minutes per request, and a run that fails mid-way makes more
requests (ending the run, MLflow's exit hook), so a step took 250-506 s to fail. Steps bound
the retries instead (:data:`RETRY_DEFAULTS`, each overridable by its variable), turn "did not
answer" into :class:`TrackingUnavailable` (exit 75: retry later), and close a run they leave
open with one quick request, or record it so that the next train marks it FAILED
(:mod:`ml_tasks.model.open_runs`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ml_tasks.core import events
from ml_tasks.core.settings import Settings, load_settings
from ml_tasks.core.step import InfrastructureError, StepError

T = TypeVar("T")

# MLflow's own retry settings, as the steps set them unless the environment already does.
RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# MLflow's defaults for the rest (mlflow/environment_variables.py, MLflow 3.17).
MLFLOW_BACKOFF_JITTER_DEFAULT = "1.0"
BACKOFF_MAX = 120.0  # urllib3 Retry.DEFAULT_BACKOFF_MAX: no single wait is longer


@dataclass(frozen=True)
class RetryBudget:
    """How long one MLflow request may take before MLflow gives up, from its settings."""

    max_retries: int
    backoff_factor: int
    jitter: float
    timeout: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryBudget:
        """The settings MLflow will read (types as MLflow parses them), with the steps' defaults."""
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(name) or RETRY_DEFAULTS.get(name) or default

        return cls(
            max_retries=int(get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")),
            backoff_factor=int(get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")),
            jitter=float(get("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", MLFLOW_BACKOFF_JITTER_DEFAULT)),
            timeout=int(get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")),
        )

    def waits(self) -> float:
        """Seconds slept between the attempts of one request, at most (urllib3's formula:
        nothing after the first failure, then ``factor * 2**(n-1)`` plus jitter, capped)."""
        return sum(
            min(BACKOFF_MAX, self.backoff_factor * 2 ** (n - 1) + self.jitter)
            for n in range(2, self.max_retries + 1)
        )

    def worst_case(self) -> float:
        """Seconds until MLflow gives up on a server that accepts connections but never answers."""
        return self.waits() + (self.max_retries + 1) * self.timeout

    def describe(self) -> str:
        return (
            f"{self.max_retries} retries over at most {self.waits():.0f} s when nothing answers "
            f"at the address, {self.worst_case():.0f} s when a server accepts connections but "
            f"never replies (MLFLOW_HTTP_REQUEST_MAX_RETRIES={self.max_retries}, "
            f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR={self.backoff_factor}, "
            f"MLFLOW_HTTP_REQUEST_TIMEOUT={self.timeout} s per attempt)"
        )


def bound_retries() -> None:
    """Give MLflow the steps' retry settings, where the environment does not set its own."""
    for name, value in RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` comes from a tracking server that did not answer (any MLflow call).

    MLflow wraps the HTTP client's error in a plain ``MlflowException`` whose message is the
    only text, so the cause chain is what tells "gone" from "said no" (a 404 is an answer).
    """
    import requests

    gone = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        ConnectionError,
        TimeoutError,
    )
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, gone):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def what_failed(exc: BaseException) -> str:
    """What went wrong with the server, in a few words a person can check."""
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused: nothing listens there"
    if "too many" in text and "error responses" in text:
        return "it kept answering with server errors"
    if "Connection aborted" in text or "RemoteDisconnected" in text:
        return "it dropped the connection"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "no reply within MLFLOW_HTTP_REQUEST_TIMEOUT"
    if "resolution" in text or "not known" in text:
        return "its host name does not resolve"
    return text.strip().splitlines()[-1][-200:] if text.strip() else type(exc).__name__


class TrackingUnavailable(InfrastructureError):
    """The MLflow tracking server did not answer within MLflow's retry budget."""

    def __init__(self, tracking_uri: str, cause: BaseException, *, open_run: str | None = None):
        uri = events.redact(tracking_uri)
        what = what_failed(cause)
        message = (
            f"the MLflow tracking server at {uri} did not answer ({what}) after "
            f"{RetryBudget.from_env().describe()}. "
        )
        if open_run:
            message += (
                f"MLflow run {open_run} could not be closed: it shows RUNNING until the next "
                "train step that reaches this server marks it FAILED. "
            )
        health = f" (`curl {uri}/health`)" if uri.startswith(("http://", "https://")) else ""
        message += (
            f"The input is fine: check that the server is up{health} and run the step again; "
            "exit code 75 tells an orchestrator to retry."
        )
        super().__init__(message, tracking_uri=uri, mlflow_run_id=open_run, unreachable=what)


def call_tracked(settings: Settings, body: Callable[[], T]) -> T:
    """Run a step body; a tracking server that does not answer becomes TrackingUnavailable."""
    try:
        return body()
    except (StepError, InfrastructureError):
        raise
    except Exception as exc:
        if is_unreachable(exc):
            raise TrackingUnavailable(settings.tracking_uri, exc) from exc
        raise


def tracked(body: Callable[[Settings], T]) -> Callable[[], T]:
    """``body`` as a step body: settings loaded when it runs, an MLflow that does not answer
    turned into :class:`TrackingUnavailable` (exit 75). What a command or a component hands to
    the step contract."""

    def run() -> T:
        settings = load_settings()
        return call_tracked(settings, lambda: body(settings))

    return run


def use_mlflow(settings: Settings) -> str:
    """Point MLflow at the configured tracking server or embedded store; returns experiment id.

    With an embedded store (SQLite) the artifacts go to ``<home>/mlartifacts``; with a server,
    the server decides (``--serve-artifacts``), so nothing is written beside the caller.
    """
    import mlflow

    # Steps log JSON events; MLflow's per-file download bars only clutter task logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    bound_retries()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    experiment = mlflow.get_experiment_by_name(settings.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    artifact_location = settings.artifact_uri if settings.tracking_is_local else None
    try:
        return str(
            mlflow.create_experiment(settings.experiment, artifact_location=artifact_location)
        )
    except mlflow.exceptions.MlflowException:
        # Another run created it between our look-up and our create.
        experiment = mlflow.get_experiment_by_name(settings.experiment)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def code_revision(settings: Settings) -> str:
    """The git commit of the code that runs (``FLYWHEEL_CODE_REVISION`` in images)."""
    if env := os.environ.get("FLYWHEEL_CODE_REVISION"):
        return env
    done = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=settings.repo, capture_output=True, text=True
    )
    revision = done.stdout.strip() if done.returncode == 0 else "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "ml_tasks"],
        cwd=settings.repo,
        capture_output=True,
        text=True,
    )
    return revision + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def lineage_tags(
    settings: Settings, dataset_version: str, caller_run_id: str | None
) -> dict[str, Any]:
    """Tags that tie a run or model version to its data, code and orchestrator run."""
    tags: dict[str, Any] = {
        "flywheel.dataset_version": dataset_version,
        "flywheel.code_revision": code_revision(settings),
    }
    if caller_run_id:
        tags["flywheel.caller_run_id"] = caller_run_id
    for key, env in (
        ("flywheel.dag_id", "AIRFLOW_CTX_DAG_ID"),
        ("flywheel.task_id", "AIRFLOW_CTX_TASK_ID"),
    ):
        if os.environ.get(env):
            tags[key] = os.environ[env]
    return tags
