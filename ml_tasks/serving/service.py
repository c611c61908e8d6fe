"""The model service as a function: load (or follow) a model, then serve it until stopped.

:func:`serve` puts the parts of :mod:`ml_tasks.serving` together the way ``python -m
ml_tasks.serve`` asks for them: the predictor, the incoming-image store, the champion watcher
and KServe's model server. It returns the command's exit code: 0 when the server stopped, 1
when a model it was told to load once cannot be loaded.
"""

from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# While watching, no retries inside a poll (the next poll retries), and no download progress
# bars in a service's log (one per file, every time a version is loaded).
WATCH_MLFLOW_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


@dataclass(frozen=True)
class ServeOptions:
    """What the service is asked to do; ``None`` means "the default the settings give"."""

    model_uri: str | None = None
    watch_seconds: float = 5.0
    model_name: str | None = None
    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_PORT
    sample_rate: float = 1.0
    lake_uri: str | None = None
    store_queue: int = 1000
    max_batch: int = 64
    max_image_bytes: int = 4 * 1024 * 1024
    max_pixels: int | None = None
    max_request_pixels: int | None = None
    decode_workers: int = 1
    max_request_bytes: int = 16 * 1024 * 1024
    torch_threads: int = 1
    access_log: bool = False


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


def serve(options: ServeOptions) -> int:
    """Serve until the server stops; the exit code (1: a model to load once did not load)."""
    from ml_tasks.core import events
    from ml_tasks.core.settings import load_settings

    settings = load_settings()
    events.configure("serve")
    model_uri = options.model_uri or f"models:/{settings.model_name}@champion"
    name = options.model_name or registered_name(model_uri) or settings.model_name

    _import_kserve()
    import mlflow

    from ml_tasks.serving.champion import ChampionWatcher, watched_alias
    from ml_tasks.serving.http import FlywheelModelServer
    from ml_tasks.serving.metrics import store_counts
    from ml_tasks.serving.predictor import ClassifierModel
    from ml_tasks.serving.store import IncomingStore

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    lake_uri = options.lake_uri or settings.lake_uri
    store = None
    if options.sample_rate > 0:
        store = IncomingStore(
            lake_uri, sample_rate=options.sample_rate, max_queue=options.store_queue
        )
    max_pixels = options.max_pixels or training_max_pixels()
    model = ClassifierModel(
        name,
        model_uri,
        store=store,
        max_batch=options.max_batch,
        max_image_bytes=options.max_image_bytes,
        max_pixels=max_pixels,
        max_request_pixels=options.max_request_pixels or max_pixels,
        decode_workers=options.decode_workers,
        torch_threads=options.torch_threads,
    )
    alias = watched_alias(model_uri) if options.watch_seconds > 0 else None
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
            model, *alias, tracking_uri=settings.tracking_uri, every=options.watch_seconds
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
        host=options.host,
        http_port=options.http_port,
        max_request_bytes=options.max_request_bytes,
        access_log=options.access_log,
    )
    events.emit(
        "serving",
        model_uri=model_uri,
        model_name=name,
        model_version=model.version,
        host=options.host,
        port=options.http_port,
        sample_rate=options.sample_rate,
        lake=lake_uri if store else None,
        watch_seconds=options.watch_seconds if watcher else None,
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
