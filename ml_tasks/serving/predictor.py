"""The KServe predictor: one registered model, both protocols, inputs kept for annotation.

:class:`ClassifierModel` is a ``kserve.Model``: ``load()`` reads the model through
:func:`ml_tasks.model.load_classifier` (class names and image size come from the model's
MLflow metadata) and only then sets ``ready``; ``preprocess`` parses a v1 dict or a v2
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
from datetime import UTC, datetime
from typing import Any

import numpy as np
from kserve import Model
from kserve.errors import InferenceError
from kserve.logging import logger
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from ml_tasks import events
from ml_tasks.serving.batching import TickBatcher
from ml_tasks.serving.decoding import Decoder
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
from ml_tasks.serving.store import IncomingImage, IncomingStore


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
        self.classifier: Any = None
        self.limits: Limits | None = None
        self._limit_args = {"max_batch": max_batch, "max_image_bytes": max_image_bytes}
        if max_pixels is not None:
            self._limit_args["max_pixels"] = max_pixels
        if max_request_pixels is not None:
            self._limit_args["max_request_pixels"] = max_request_pixels
        self._decode_workers = decode_workers
        self._torch_threads = torch_threads
        self._batcher: TickBatcher | None = None
        self.decoder: Decoder | None = None
        self.metrics = serving_metrics()

    @property
    def version(self) -> str | None:
        return None if self.classifier is None else self.classifier.version

    def load(self) -> bool:
        """Load the model and answer one warm-up request; ``ready`` only when both worked."""
        import torch

        from ml_tasks.model import load_classifier

        # One small image per request: intra-op threads cost more than they save.
        torch.set_num_threads(self._torch_threads)
        self.classifier = load_classifier(self.model_uri)
        self.limits = Limits(image_size=self.classifier.image_size, **self._limit_args)
        self.decoder = Decoder(self.limits, workers=self._decode_workers)
        size = self.classifier.image_size
        self.classifier.predict_proba(np.zeros((1, size, size), dtype=np.float32))
        self.ready = True
        events.emit(
            "model_loaded",
            model_uri=self.model_uri,
            model_name=self.name,
            model_version=self.version,
            classes=len(self.classifier.classes),
        )
        return self.ready

    def start(self) -> None:
        """Called by the ModelServer on start: start the decoding process and the writer of
        stored inputs (``ready`` untouched)."""
        if self.decoder is not None:
            self.decoder.start()
        if self.store is not None:
            self.store.start()

    def stop(self) -> None:
        """Called on shutdown: write what is queued (bounded wait), then report not ready."""
        self.ready = False
        if self.decoder is not None:
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
        try:
            assert self.limits is not None and self.decoder is not None, "preprocess before load"
            batch = (
                parse_v2(payload, self.limits)
                if protocol == "v2"
                else parse_v1(payload, self.limits)
            )
            await self.decoder.decode(batch)
        except BadInput as exc:
            raise RefusedInput(exc.reason, str(exc)) from None
        except Exception as exc:
            raise self._internal_error(exc, protocol, headers, None) from None
        batch.started = started
        return batch

    async def predict(self, batch: Batch, headers: dict[str, str] | None = None) -> Any:
        """Classify the batch (with concurrent requests' images, one forward pass), keep
        sampled images, answer in the request's protocol."""
        request_id = (headers or {}).get("x-request-id") or batch.request_id or uuid.uuid4().hex
        try:
            if self._batcher is None:
                self._batcher = TickBatcher(self.classifier.predict_proba)
            probabilities = await self._batcher(batch.pixels)
            top = probabilities.argmax(axis=1)
            classes = self.classifier.classes
            labels = [classes[i] for i in top]
            scores = probabilities[np.arange(len(top)), top]
            if self.store is not None:
                self._keep(batch, labels, scores, probabilities, request_id)
            response = (
                self._v2_response(batch, labels, scores, probabilities, request_id)
                if batch.protocol == "v2"
                else self._v1_response(labels, scores, probabilities, request_id)
            )
        except Exception as exc:
            raise self._internal_error(exc, batch.protocol, headers, request_id) from None
        self.metrics.images.labels(self.name).inc(len(labels))
        self.metrics.requests.labels(self.name, batch.protocol, "ok").inc()
        self.metrics.latency.labels(self.name, batch.protocol).observe(
            time.perf_counter() - batch.started
        )
        return response

    def _v1_response(
        self, labels: list[str], scores: np.ndarray, probabilities: np.ndarray, request_id: str
    ) -> dict[str, Any]:
        classes = self.classifier.classes
        predictions = [
            {"label": label, "score": score, "probabilities": dict(zip(classes, row, strict=True))}
            for label, score, row in zip(
                labels, scores.tolist(), probabilities.tolist(), strict=True
            )
        ]
        return {
            "predictions": predictions,
            "model_name": self.name,
            "model_version": self.version,
            "request_id": request_id,
        }

    def _v2_response(
        self,
        batch: Batch,
        labels: list[str],
        scores: np.ndarray,
        probabilities: np.ndarray,
        request_id: str,
    ) -> InferResponse:
        classes = self.classifier.classes
        tensors = {
            "label": np.array(labels, dtype=np.object_),
            "score": scores.astype(np.float32),
            "probabilities": probabilities.astype(np.float32),
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
            response_id=batch.request_id or request_id,
            model_name=self.name,
            model_version=self.version,
            infer_outputs=outputs,
        )

    def _keep(
        self,
        batch: Batch,
        labels: list[str],
        scores: np.ndarray,
        probabilities: np.ndarray,
        request_id: str,
    ) -> None:
        assert self.store is not None
        received_at: datetime | None = None
        classes = self.classifier.classes
        for i, source in enumerate(batch.sources):
            if not self.store.sampled():
                continue
            received_at = received_at or datetime.now(UTC)
            self.store.offer(
                IncomingImage(
                    source=source,
                    prediction=labels[i],
                    score=float(scores[i]),
                    probabilities=dict(zip(classes, probabilities[i].tolist(), strict=True)),
                    model_name=self.name,
                    model_version=self.version,
                    request_id=request_id,
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
