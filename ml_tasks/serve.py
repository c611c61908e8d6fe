"""Serve a registered model over KServe's v1 and v2 (Open Inference Protocol) REST APIs.

``python -m ml_tasks.serve`` loads ``models:/<FLYWHEEL_MODEL_NAME>@champion`` (or
``--model-uri``, any MLflow model URI) through
``ml_tasks.model.classifier.load_classifier`` and serves it with KServe's ``ModelServer`` on
127.0.0.1:8080 (loopback only unless ``--host`` or ``FLYWHEEL_SERVE_HOST`` says otherwise; the
container image sets 0.0.0.0). No gRPC.
On an alias URI it follows the alias (``--watch-seconds``, :mod:`ml_tasks.serving.champion`):
a new version is loaded and warmed up beside the serving one, then swapped in without failing
a request; without a version yet it starts anyway, live but not ready, and says why.
Sampled request images are written to the lake's ``incoming/`` prefix for annotation, off the
request path (``ml_tasks.serving.store``). Routes (``<name>`` is the model name, e.g. digits):

- ``POST /v1/models/<name>:predict`` and ``POST /v2/models/<name>/infer``: predictions;
- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2/models/<name>/ready``, ``/v1/models/<name>``:
  health (ready once a model is loaded and warmed up; until then 503
  ``{"ready": false, "reason": "no digits@champion yet in MLflow at ..."}``, and predict answers
  503 with the same reason);
- ``GET /v2/models/<name>``: inputs and outputs; ``GET /metrics``: Prometheus.

Payloads. An image is a PNG or JPEG file, base64-encoded (decoded with the rules training data
passes: size, pixel and mode limits; converted to the model's grayscale size x size). A pixel
array is the model's own input: size x size (8 x 8 for digits), row-major, ink bright.

v1 (``instances`` holds 1..max-batch items, each an image or a pixel array of floats in [0, 1];
a pixel array may also be 1 x size x size)::

    {"instances": [{"b64": "iVBORw0KGgo..."}, [[0.0, 0.5, ...], ...]]}
    -> {"predictions": [{"label": "3", "score": 0.98, "probabilities": {"0": 0.001, ...}}, ...],
        "model_name": "digits", "model_version": "4", "request_id": "..."}

v2 (exactly one input: ``image`` with datatype BYTES and shape [N], each item a base64 string;
or ``pixels`` with datatype FP32 (0..1) or UINT8 (0..255) and shape [N, size, size] or
[N, 1, size, size], data flat or nested exactly as the shape; ``outputs`` may pick from the
four below)::

    {"id": "r1", "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                             "data": ["iVBORw0KGgo..."]}]}
    {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8], "data": [0, 12, ...]}]}
    -> {"model_name": "digits", "model_version": "4", "id": "r1", "outputs": [
          {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["3"]},
          {"name": "score", "datatype": "FP32", "shape": [1], "data": [0.98]},
          {"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": [...]},
          {"name": "classes", "datatype": "BYTES", "shape": [10], "data": ["0", ..., "9"]}]}

Errors: a request the service cannot use (not JSON, not an image, over a byte or pixel limit
per image or per request, wrong shape or datatype, data nested otherwise than its shape,
empty or oversized batch, a field the protocol does not define) gets HTTP 400
``{"error": "<what is wrong>"}``, a method other than POST on a predict route 405, an unknown
model 404 (every 4xx is counted by reason on ``/metrics``); a failure inside the service gets
500 with only a request id (the traceback goes to the server log). ``X-Request-Id`` is
honoured and stored.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ml_tasks.core.command import command_app, entry_point, finish
from ml_tasks.serving.service import DEFAULT_HOST, DEFAULT_PORT, ServeOptions, serve

EPILOG = """\
payloads (see the module docstring: python -c 'import ml_tasks.serve as s; print(s.__doc__)'):
  v1  POST /v1/models/NAME:predict
      {"instances": [{"b64": "<base64 PNG/JPEG>"}, [[<size x size floats in 0..1>]]]}
  v2  POST /v2/models/NAME/infer, one input:
      {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [N], "data": ["<base64>", ...]}]}
      {"inputs": [{"name": "pixels", "datatype": "FP32"|"UINT8", "shape": [N, size, size],
                   "data": [...]}]}
  outputs: label, score, probabilities, classes (v2 tensors; v1 one object per instance).
  Bad input -> 400 {"error": "..."}; internal failure -> 500 with a request id only.

  No model yet (watching an alias that names none) -> 503 {"error": "...", "reason": "..."}.

following the champion: on models:/NAME@ALIAS (the default) the alias is looked up every
  --watch-seconds; a new version is loaded and warmed up off the request path, then swapped in
  (requests in flight finish on the old one; answers carry the model_version that answered).
  A version that fails to load, or MLflow not answering, leaves the serving version serving
  (events model_load_failed / registry_unreachable, /metrics counters) and is retried on the
  next poll. MLflow requests are not retried within a poll (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0,
  MLFLOW_HTTP_REQUEST_TIMEOUT=10 unless set): the next poll is the retry.

environment: MLFLOW_TRACKING_URI (where the model is), FLYWHEEL_LAKE_URI and AWS_* (where
  inputs are stored), FLYWHEEL_MODEL_NAME, FLYWHEEL_SERVE_HOST, FLYWHEEL_SERVE_SAMPLE_RATE.

example: python -m ml_tasks.serve --http-port 8085 &
  curl -s localhost:8085/v1/models/digits:predict -H 'Content-Type: application/json' \\
    -d "{\\"instances\\": [{\\"b64\\": \\"$(base64 -w0 digit.png)\\"}]}"
"""


MIB = 1024 * 1024

app = command_app()


def _count(name: str, help: str) -> Any:
    """A positive count or limit: 0 or less is a usage error (exit 2) that names the option."""
    return typer.Option(name, min=1, help=help)


@app.command(epilog=EPILOG)
def main_command(
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", help="MLflow model URI (default: models:/NAME@champion)"),
    ] = None,
    watch_seconds: Annotated[
        float,
        typer.Option(
            "--watch-seconds",
            min=0.0,
            help="how often to look the alias of an alias URI up in MLflow and swap in the "
            "version it names (0: load once at start, and fail when there is none; a version "
            "URI is never watched)",
        ),
    ] = 5.0,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name",
            help="name in the URL paths (default: the registered model's name, else "
            "FLYWHEEL_MODEL_NAME)",
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            envvar="FLYWHEEL_SERVE_HOST",
            help="address to listen on (default: FLYWHEEL_SERVE_HOST or 127.0.0.1, loopback only)",
        ),
    ] = DEFAULT_HOST,
    http_port: Annotated[
        int, typer.Option("--http-port", help="HTTP port (KServe's default)")
    ] = DEFAULT_PORT,
    sample_rate: Annotated[
        float,
        typer.Option(
            "--sample-rate",
            min=0.0,
            max=1.0,
            envvar="FLYWHEEL_SERVE_SAMPLE_RATE",
            help="share of request images kept in incoming/ (default: "
            "FLYWHEEL_SERVE_SAMPLE_RATE or 1.0; 0 turns storing off)",
        ),
    ] = 1.0,
    lake_uri: Annotated[
        str | None, typer.Option(help="where to keep inputs (default: FLYWHEEL_LAKE_URI)")
    ] = None,
    store_queue: Annotated[
        int,
        _count("--store-queue", "images waiting to be written before new ones are dropped"),
    ] = 1000,
    max_batch: Annotated[int, _count("--max-batch", "images per request")] = 64,
    max_image_bytes: Annotated[int, _count("--max-image-bytes", "encoded bytes per image")] = 4
    * MIB,
    max_pixels: Annotated[
        int | None,
        _count(
            "--max-pixels", "pixels per decoded image (default: params.yaml prepare.max_pixels)"
        ),
    ] = None,
    max_request_pixels: Annotated[
        int | None,
        _count(
            "--max-request-pixels",
            "decoded pixels in all the images of one request, checked before decoding "
            "(default: the --max-pixels of one image)",
        ),
    ] = None,
    decode_workers: Annotated[
        int,
        _count("--decode-workers", "processes that decode large images, off the event loop"),
    ] = 1,
    max_request_bytes: Annotated[int, _count("--max-request-bytes", "bytes per request body")] = 16
    * MIB,
    torch_threads: Annotated[int, _count("--torch-threads", "torch intra-op threads")] = 1,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="log one line per request")
    ] = False,
) -> None:
    """Serve a registered model with KServe (v1 + v2 REST); keep sampled inputs in the lake's
    incoming/ prefix for annotation."""
    options = ServeOptions(
        model_uri=model_uri,
        watch_seconds=watch_seconds,
        model_name=model_name,
        host=host,
        http_port=http_port,
        sample_rate=sample_rate,
        lake_uri=lake_uri,
        store_queue=store_queue,
        max_batch=max_batch,
        max_image_bytes=max_image_bytes,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        decode_workers=decode_workers,
        max_request_bytes=max_request_bytes,
        torch_threads=torch_threads,
        access_log=access_log,
    )
    finish(serve(options))


main = entry_point(app, "ml_tasks.serve")

if __name__ == "__main__":
    raise SystemExit(main())
