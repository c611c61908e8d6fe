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

import argparse
import gc
import os
import sys
from typing import Any

from ml_tasks.core.step import positive_int

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# While watching, no retries inside a poll (the next poll retries), and no download progress
# bars in a service's log (one per file, every time a version is loaded).
WATCH_MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

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


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ml_tasks.serve",
        description="Serve a registered model with KServe (v1 + v2 REST); keep sampled inputs "
        "in the lake's incoming/ prefix for annotation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-uri", help="MLflow model URI (default: models:/NAME@champion)")
    parser.add_argument(
        "--watch-seconds",
        type=_seconds,
        default=5.0,
        help="how often to look the alias of an alias URI up in MLflow and swap in the version "
        "it names (default: %(default)s; 0: load once at start, and fail when there is none; "
        "a version URI is never watched)",
    )
    parser.add_argument(
        "--model-name",
        help="name in the URL paths (default: the registered model's name, else "
        "FLYWHEEL_MODEL_NAME)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("FLYWHEEL_SERVE_HOST", DEFAULT_HOST),
        help="address to listen on (default: FLYWHEEL_SERVE_HOST or 127.0.0.1, loopback only)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=DEFAULT_PORT,
        help="HTTP port (default: %(default)s, KServe's)",
    )
    parser.add_argument(
        "--sample-rate",
        type=_fraction,
        default=_fraction(os.environ.get("FLYWHEEL_SERVE_SAMPLE_RATE", "1.0")),
        help="share of request images kept in incoming/ (default: FLYWHEEL_SERVE_SAMPLE_RATE "
        "or 1.0; 0 turns storing off)",
    )
    parser.add_argument("--lake-uri", help="where to keep inputs (default: FLYWHEEL_LAKE_URI)")
    parser.add_argument(
        "--store-queue",
        type=positive_int,
        default=1000,
        help="images waiting to be written before new ones are dropped (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch",
        type=positive_int,
        default=64,
        help="images per request (default: %(default)s)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=positive_int,
        default=4 * 1024 * 1024,
        help="encoded bytes per image (default: %(default)s)",
    )
    parser.add_argument(
        "--max-pixels",
        type=positive_int,
        help="pixels per decoded image (default: params.yaml prepare.max_pixels)",
    )
    parser.add_argument(
        "--max-request-pixels",
        type=positive_int,
        help="decoded pixels in all the images of one request, checked before decoding "
        "(default: the --max-pixels of one image)",
    )
    parser.add_argument(
        "--decode-workers",
        type=positive_int,
        default=1,
        help="processes that decode large images, off the event loop (default: %(default)s)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=positive_int,
        default=16 * 1024 * 1024,
        help="bytes per request body (default: %(default)s)",
    )
    parser.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="torch intra-op threads (default: %(default)s)",
    )
    parser.add_argument("--access-log", action="store_true", help="log one line per request")
    return parser


def registered_name(model_uri: str) -> str | None:
    """``digits`` for ``models:/digits@champion`` or ``models:/digits/3``, else None."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri.removeprefix("models:/")
    return rest.split("@", 1)[0].split("/", 1)[0] or None


def training_max_pixels() -> int | None:
    """The pixel limit training data passes (params.yaml), when there is a params file."""
    from ml_tasks.core.settings import ConfigError, load_params

    try:
        value = load_params().get("prepare", {}).get("max_pixels")
    except ConfigError:
        return None
    return int(value) if value else None


def _import_kserve() -> Any:
    """Import KServe's server module without letting it read our command line.

    ``kserve.model_server`` parses ``sys.argv`` at import time (``parse_known_args``); our own
    flags are not its business, so it sees only the program name.
    """
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve.model_server
    finally:
        sys.argv = saved
    return kserve.model_server


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ml_tasks.core import events
    from ml_tasks.core.settings import load_settings

    settings = load_settings()
    events.configure("serve")
    model_uri = args.model_uri or f"models:/{settings.model_name}@champion"
    name = args.model_name or registered_name(model_uri) or settings.model_name

    _import_kserve()
    import mlflow

    from ml_tasks.serving.champion import ChampionWatcher, watched_alias
    from ml_tasks.serving.http import FlywheelModelServer
    from ml_tasks.serving.metrics import store_counts
    from ml_tasks.serving.predictor import ClassifierModel
    from ml_tasks.serving.store import IncomingStore

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    lake_uri = args.lake_uri or settings.lake_uri
    store = None
    if args.sample_rate > 0:
        store = IncomingStore(lake_uri, sample_rate=args.sample_rate, max_queue=args.store_queue)
    max_pixels = args.max_pixels or training_max_pixels()
    model = ClassifierModel(
        name,
        model_uri,
        store=store,
        max_batch=args.max_batch,
        max_image_bytes=args.max_image_bytes,
        max_pixels=max_pixels,
        max_request_pixels=args.max_request_pixels or max_pixels,
        decode_workers=args.decode_workers,
        torch_threads=args.torch_threads,
    )
    alias = watched_alias(model_uri) if args.watch_seconds > 0 else None
    watcher = None
    if alias is None:
        try:
            model.load()
        except Exception as exc:  # whatever went wrong, one clear line instead of a traceback
            events.emit("load_failed", level="error", model_uri=model_uri, error=str(exc))
            print(f"error: cannot load {model_uri}: {exc}", file=sys.stderr)
            return 1
    else:
        for variable, value in WATCH_MLFLOW_ENV.items():
            os.environ.setdefault(variable, value)
        watcher = ChampionWatcher(
            model, *alias, tracking_uri=settings.tracking_uri, every=args.watch_seconds
        )
        watcher.check()  # a champion that exists serves from the first request on
    # Everything loaded so far lives as long as the server: keep the collector from walking it
    # again and again (full collections of a heap this size were the p99 outliers).
    gc.collect()
    gc.freeze()
    # KServe skips its logging set-up when anything configured the root logger first (MLflow's
    # store migrations do): apply it explicitly, so uvicorn's and KServe's lines show.
    from kserve.logging import KSERVE_LOG_CONFIG, configure_logging

    configure_logging(KSERVE_LOG_CONFIG)
    server = FlywheelModelServer(
        host=args.host,
        http_port=args.http_port,
        max_request_bytes=args.max_request_bytes,
        access_log=args.access_log,
    )
    events.emit(
        "serving",
        model_uri=model_uri,
        model_name=name,
        model_version=model.version,
        host=args.host,
        port=args.http_port,
        sample_rate=args.sample_rate,
        lake=lake_uri if store else None,
        watch_seconds=args.watch_seconds if watcher else None,
        not_ready_reason=model.not_ready_reason,
    )
    try:
        if watcher is not None:
            watcher.start()
        server.start([model])
    finally:
        if watcher is not None:
            watcher.stop()
        model.stop()
        counts = store_counts()
        events.emit(
            "stopped",
            model_name=name,
            model_version=model.version,
            stored=counts["stored"],
            dropped=counts["dropped"],
            failed=counts["failed"],
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
