"""Following the champion: the registry's alias decides what the service answers with.

Deploying moves ``<name>@champion`` in MLflow; nothing tells the running service. On the cluster
KServe rolls a new InferenceService out; locally the service looks the alias up itself
(:class:`ChampionWatcher`, a background thread polling every few seconds). When the alias names
another version, that version is loaded and warmed up in the watcher's thread, off the request
path, and only then swapped in (:meth:`ClassifierModel.swap_in`): one reference replaced, so a
request already parsed finishes on the model it started with and every later one gets the new
model. Whatever goes wrong here is reported (event + metric) and never stops the service: the
version that serves keeps serving, and the next poll tries again. Without any version yet, the
service is live but not ready, and says why (:attr:`ClassifierModel.not_ready_reason`).

A version URI (``models:/digits/3``) or a run's model is never watched: it names one model.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_tasks.core import events
from ml_tasks.serving.batching import TickBatcher
from ml_tasks.serving.inputs import Limits
from ml_tasks.serving.metrics import serving_metrics

if TYPE_CHECKING:
    from ml_tasks.serving.predictor import ClassifierModel

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")


def watched_alias(model_uri: str) -> tuple[str, str] | None:
    """``("digits", "champion")`` for ``models:/digits@champion``; None for a URI naming one
    model (a version, a run's model), which is never swapped."""
    match = ALIAS_URI.match(model_uri)
    return (match["name"], match["alias"]) if match else None


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to answer: what a request needs from first parse to last byte."""

    classifier: Any
    limits: Limits
    batcher: TickBatcher

    @property
    def version(self) -> str | None:
        version: str | None = self.classifier.version
        return version


def load_model(model_uri: str, limit_args: dict[str, int]) -> LoadedModel:
    """Load ``model_uri`` and have it answer once: a model that cannot predict never serves."""
    from ml_tasks.model.classifier import load_classifier

    classifier = load_classifier(model_uri)
    size = classifier.image_size
    classifier.predict_proba(np.zeros((1, size, size), dtype=np.float32))
    return LoadedModel(
        classifier=classifier,
        limits=Limits(image_size=size, **limit_args),
        batcher=TickBatcher(classifier.predict_proba),
    )


class ChampionMissing(LookupError):
    """The registry answered: the model or its alias does not exist (yet)."""


class ChampionWatcher:
    """Polls ``name@alias`` in MLflow and has ``model`` serve the version it names."""

    def __init__(
        self, model: ClassifierModel, name: str, alias: str, *, tracking_uri: str, every: float
    ) -> None:
        self.model = model
        self.name = name
        self.alias = alias
        self.tracking_uri = tracking_uri
        self.every = every
        self.metrics = serving_metrics()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._registry_failing = False
        self._missing_reported = False
        self._failed_versions: set[str] = set()

    @property
    def missing_reason(self) -> str:
        return f"no {self.name}@{self.alias} yet in MLflow at {self.tracking_uri}"

    def start(self) -> None:
        """Poll in a daemon thread (the server's shutdown must not wait for a download)."""
        self._thread = threading.Thread(target=self._run, name="champion-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.check()

    def check(self) -> None:
        """One poll: look the alias up; load and swap in the version it names if it is new.

        Never raises: a registry that does not answer or a version that does not load is
        reported and leaves the serving model as it is.
        """
        try:
            version = self._champion_version()
        except ChampionMissing:
            self._champion_missing()
            return
        except Exception as exc:  # reported and counted; the next poll is the retry
            self._registry_failed(exc)
            return
        self._registry_answered()
        self._missing_reported = False
        if version != self.model.version:
            self._load(version)

    def _champion_version(self) -> str:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = MlflowClient(
                tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
            )
        try:
            return str(self._client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as exc:
            # No such model: RESOURCE_DOES_NOT_EXIST; a model without the alias: MLflow 3 says
            # INVALID_PARAMETER_VALUE "... alias champion not found".
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
                exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)
            ):
                raise ChampionMissing(str(exc)) from exc
            raise

    def _load(self, version: str) -> None:
        uri = f"models:/{self.name}/{version}"  # the version, not the alias: it cannot move
        if self.model.version is None:
            self.model.wait_for_model(f"loading {uri} ({self.name}@{self.alias})")
        began = time.perf_counter()
        try:
            loaded = self.model.load_uri(uri)
        except Exception as exc:  # reported and counted; the next poll is the retry
            self._load_failed(version, exc)
            return
        self._failed_versions.discard(version)
        self.model.swap_in(loaded, model_uri=uri, load_seconds=time.perf_counter() - began)

    def _load_failed(self, version: str, exc: Exception) -> None:
        self.metrics.load_failures.labels(self.model.name).inc()
        error = _one_line(exc)
        serving = self.model.version
        if serving is None:
            self.model.wait_for_model(
                f"cannot load {self.name} version {version} ({self.name}@{self.alias}): {error}"
            )
        if version in self._failed_versions:
            return  # reported once per version; the metric counts every attempt
        self._failed_versions.add(version)
        from kserve.logging import logger

        logger.error(
            "cannot load %s version %s; still serving %s", self.name, version, serving, exc_info=exc
        )
        events.emit(
            "model_load_failed",
            level="error",
            model_name=self.model.name,
            model_version=version,
            serving_version=serving,
            error=error,
            retry_seconds=self.every,
        )

    def _champion_missing(self) -> None:
        self._registry_answered()
        self._explain_while_unserved(self.missing_reason)
        if not self._missing_reported:
            self._missing_reported = True
            self._warn("champion_missing", self.missing_reason)

    def _registry_failed(self, exc: Exception) -> None:
        from ml_tasks.model.tracking import is_unreachable

        self.metrics.registry_failures.labels(self.model.name).inc()
        what = "did not answer" if is_unreachable(exc) else "failed"
        reason = f"MLflow at {self.tracking_uri} {what}: {_one_line(exc)}"
        self._explain_while_unserved(reason)
        if not self._registry_failing:
            self._registry_failing = True
            self._warn("registry_unreachable", reason, retry_seconds=self.every)

    def _explain_while_unserved(self, reason: str) -> None:
        """While no version serves, ``reason`` is what readiness and predict answer."""
        if self.model.version is None:
            self.model.wait_for_model(reason)

    def _warn(self, event: str, reason: str, **fields: Any) -> None:
        events.emit(
            event,
            level="warning",
            model_name=self.model.name,
            reason=reason,
            serving_version=self.model.version,
            **fields,
        )

    def _registry_answered(self) -> None:
        if self._registry_failing:
            self._registry_failing = False
            events.emit("registry_reachable", model_name=self.model.name)


def _one_line(exc: BaseException) -> str:
    """The exception's last line, bounded: the full traceback is no reason a client can use."""
    text = str(exc).strip()
    last = text.splitlines()[-1] if text else ""
    return f"{type(exc).__name__}: {last[:300]}" if last else type(exc).__name__
