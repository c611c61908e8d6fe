"""The KServe predictor: one registered model, both protocols, inputs kept for annotation.

:class:`ClassifierModel` is a ``kserve.Model``: ``load()`` reads the model through
:func:`ml_tasks.model.classifier.load_classifier` (class names and image size come from the model's
MLflow metadata), warms it up and only then sets ``ready``; :meth:`~ClassifierModel.swap_in`
replaces the model that answers (the champion watcher's way in, see
:mod:`ml_tasks.serving.champion`); until a model is in, ``not_ready_reason`` says why not.
``preprocess`` takes the current model for the request (it answers the request even if another
is swapped in meanwhile), parses a v1 dict or a v2
``InferRequest`` (:mod:`ml_tasks.serving.inputs`) and decodes its images
(:mod:`ml_tasks.serving.decoding`: large ones in a decoding process, so the event loop stays
free), ``predict`` runs the classifier and answers in the protocol of the request. Bad input
raises KServe's ``InvalidInput`` (HTTP 400 with the message, counted with its reason by the
HTTP guard); anything unexpected is logged here with its traceback and answered with
``InferenceError`` (HTTP 500) carrying only the request id, so no internals reach the client.
Sampled images go to the :class:`~ml_tasks.serving.store.IncomingStore`, which never blocks.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InferenceError, ModelNotReady
from kserve.logging import logger
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from ml_tasks.core import events
from ml_tasks.serving.champion import LoadedModel, load_model
from ml_tasks.serving.decoding import Decoder
from ml_tasks.serving.incoming import IncomingImage
from ml_tasks.serving.inputs import (
    OUTPUT_NAMES,
    V2_IMAGE_INPUT,
    V2_PIXELS_INPUT,
    BadInput,
    Batch,
    Limits,
    parse_v1,
    parse_v2,
)
from ml_tasks.serving.metrics import serving_metrics
from ml_tasks.serving.refusals import RefusedInput
from ml_tasks.serving.store import IncomingStore


@dataclass(frozen=True)
class Answer:
    """One request's predictions, from the model that answered it, under its request id."""

    loaded: LoadedModel
    labels: list[str]
    scores: np.ndarray
    probabilities: np.ndarray
    request_id: str


class ClassifierModel(Model):
    """Serves one MLflow model (``models:/name@alias``, ``models:/name/N``, ``runs:/...``)."""

    def __init__(
        self,
        name: str,
        model_uri: str,
        *,
        store: IncomingStore | None = None,
        max_batch: int = 64,
        max_image_bytes: int = 4 * 1024 * 1024,
        max_pixels: int | None = None,
        max_request_pixels: int | None = None,
        decode_workers: int = 1,
        torch_threads: int = 1,
    ) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.store = store
        self._loaded: LoadedModel | None = None
        self.not_ready_reason: str | None = f"{model_uri} is not loaded yet"
        """Why the service does not answer yet (None once a model is in)."""
        self._limit_args = {"max_batch": max_batch, "max_image_bytes": max_image_bytes}
        if max_pixels is not None:
            self._limit_args["max_pixels"] = max_pixels
        if max_request_pixels is not None:
            self._limit_args["max_request_pixels"] = max_request_pixels
        self._torch_threads = torch_threads
        # One decoder for every model: the limits travel with each request's model.
        self.decoder = Decoder(workers=decode_workers)
        self.metrics = serving_metrics()

    @property
    def classifier(self) -> Any:
        return None if self._loaded is None else self._loaded.classifier

    @property
    def limits(self) -> Limits | None:
        return None if self._loaded is None else self._loaded.limits

    @property
    def version(self) -> str | None:
        return None if self._loaded is None else self._loaded.version

    def load(self) -> bool:
        """Load ``model_uri`` and answer one warm-up request; ``ready`` only when both worked."""
        began = time.perf_counter()
        self.swap_in(
            self.load_uri(self.model_uri),
            model_uri=self.model_uri,
            load_seconds=time.perf_counter() - began,
        )
        return self.ready

    def load_uri(self, model_uri: str) -> LoadedModel:
        """A model loaded and warmed up with this service's limits, not serving yet."""
        return load_model(model_uri, self._limit_args)

    def swap_in(self, loaded: LoadedModel, *, model_uri: str, load_seconds: float) -> None:
        """Serve ``loaded`` from the next request on; requests already parsed finish on the
        model they started with (they hold it). One reference replaced: atomic for the loop."""
        previous, self._loaded = self._loaded, loaded
        self.not_ready_reason = None
        self.ready = True
        version = loaded.version
        if version is not None and version.isdigit():
            self.metrics.version.labels(self.name).set(int(version))
        fields = {"model_uri": model_uri, "model_name": self.name, "model_version": version}
        if previous is None:
            events.emit(
                "model_loaded",
                **fields,
                classes=len(loaded.classifier.classes),
                load_seconds=round(load_seconds, 3),
            )
            return
        self.metrics.swaps.labels(self.name).inc()
        events.emit(
            "model_swapped",
            **fields,
            from_version=previous.version,
            to_version=version,
            load_seconds=round(load_seconds, 3),
        )

    def wait_for_model(self, reason: str) -> None:
        """No model serves yet: readiness and predict answer 503 with ``reason``."""
        if self._loaded is None:
            self.not_ready_reason = reason

    def start(self) -> None:
        """Called by the ModelServer on start: start the decoding process and the writer of
        stored inputs (``ready`` untouched)."""
        import torch

        # One small image per request: intra-op threads cost more than they save. Set here, on
        # the thread that runs the forward passes (the watcher loads models on its own).
        torch.set_num_threads(self._torch_threads)
        self.decoder.start()
        if self.store is not None:
            self.store.start()

    def stop(self) -> None:
        """Called on shutdown: write what is queued (bounded wait), then report not ready."""
        self.ready = False
        self.not_ready_reason = "the service is stopping"
        self.decoder.stop()
        if self.store is not None:
            self.store.close()

    def get_input_types(self) -> list[dict[str, Any]]:
        size = self.limits.image_size if self.limits else -1
        return [
            {"name": V2_IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
            {"name": V2_PIXELS_INPUT, "datatype": "FP32", "shape": [-1, size, size]},
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        classes = len(self.classifier.classes) if self.classifier else -1
        return [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "classes", "datatype": "BYTES", "shape": [classes]},
        ]

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        """Parse the request into a :class:`Batch` and decode its images (KServe calls this
        before ``predict``)."""
        started = time.perf_counter()
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        loaded = self._loaded  # this request's model, whatever is swapped in meanwhile
        if loaded is None:
            raise ModelNotReady(self.name, self.not_ready_reason)
        try:
            batch = (
                parse_v2(payload, loaded.limits)
                if protocol == "v2"
                else parse_v1(payload, loaded.limits)
            )
            await self.decoder.decode(batch, loaded.limits)
        except BadInput as exc:
            raise RefusedInput(exc.reason, str(exc)) from None
        except Exception as exc:
            raise self._internal_error(exc, protocol, headers, None) from None
        batch.started = started
        batch.model = loaded
        return batch

    async def predict(self, batch: Batch, headers: dict[str, str] | None = None) -> Any:
        """Classify the batch (with concurrent requests' images, one forward pass), keep
        sampled images, answer in the request's protocol."""
        request_id = (headers or {}).get("x-request-id") or batch.request_id or uuid.uuid4().hex
        # The model that parsed the request (KServe calls preprocess first), else the current.
        loaded: LoadedModel | None = batch.model or self._loaded
        assert loaded is not None, "predict before any model was loaded"
        try:
            probabilities = await loaded.batcher(batch.pixels)
            top = probabilities.argmax(axis=1)
            classes = loaded.classifier.classes
            answer = Answer(
                loaded=loaded,
                labels=[classes[i] for i in top],
                scores=probabilities[np.arange(len(top)), top],
                probabilities=probabilities,
                request_id=request_id,
            )
            if self.store is not None:
                self._keep(batch, answer)
            response = (
                self._v2_response(batch, answer)
                if batch.protocol == "v2"
                else self._v1_response(answer)
            )
        except Exception as exc:
            raise self._internal_error(exc, batch.protocol, headers, request_id) from None
        self.metrics.images.labels(self.name).inc(len(answer.labels))
        self.metrics.requests.labels(self.name, batch.protocol, "ok").inc()
        self.metrics.latency.labels(self.name, batch.protocol).observe(
            time.perf_counter() - batch.started
        )
        return response

    def _v1_response(self, answer: Answer) -> dict[str, Any]:
        classes = answer.loaded.classifier.classes
        predictions = [
            {"label": label, "score": score, "probabilities": dict(zip(classes, row, strict=True))}
            for label, score, row in zip(
                answer.labels, answer.scores.tolist(), answer.probabilities.tolist(), strict=True
            )
        ]
        return {
            "predictions": predictions,
            "model_name": self.name,
            "model_version": answer.loaded.version,
            "request_id": answer.request_id,
        }

    def _v2_response(self, batch: Batch, answer: Answer) -> InferResponse:
        classes = answer.loaded.classifier.classes
        tensors = {
            "label": np.array(answer.labels, dtype=np.object_),
            "score": answer.scores.astype(np.float32),
            "probabilities": answer.probabilities.astype(np.float32),
            "classes": np.array(classes, dtype=np.object_),
        }
        datatypes = {"label": "BYTES", "score": "FP32", "probabilities": "FP32", "classes": "BYTES"}
        outputs = [
            InferOutput(
                name=name,
                shape=list(tensors[name].shape),
                datatype=datatypes[name],
                data=tensors[name],
            )
            for name in (batch.outputs or OUTPUT_NAMES)
        ]
        return InferResponse(
            response_id=batch.request_id or answer.request_id,
            model_name=self.name,
            model_version=answer.loaded.version,
            infer_outputs=outputs,
        )

    def _keep(self, batch: Batch, answer: Answer) -> None:
        assert self.store is not None
        received_at: datetime | None = None
        classes = answer.loaded.classifier.classes
        for i, source in enumerate(batch.sources):
            if not self.store.sampled():
                continue
            received_at = received_at or datetime.now(UTC)
            self.store.offer(
                IncomingImage(
                    source=source,
                    prediction=answer.labels[i],
                    score=float(answer.scores[i]),
                    probabilities=dict(zip(classes, answer.probabilities[i].tolist(), strict=True)),
                    model_name=self.name,
                    model_version=answer.loaded.version,
                    request_id=answer.request_id,
                    received_at=received_at,
                )
            )

    def _internal_error(
        self, exc: Exception, protocol: str, headers: dict[str, str] | None, request_id: str | None
    ) -> InferenceError:
        request_id = request_id or (headers or {}).get("x-request-id") or uuid.uuid4().hex
        self.metrics.requests.labels(self.name, protocol, "error").inc()
        logger.error("inference failed (request id %s)", request_id, exc_info=exc)
        events.emit(
            "inference_failed",
            level="error",
            model_name=self.name,
            model_version=self.version,
            request_id=request_id,
            error=type(exc).__name__,
        )
        return InferenceError(f"internal error while predicting (request id {request_id})")
