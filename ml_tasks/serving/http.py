"""The HTTP side KServe leaves open: where the server listens, how big a request may be, and
that a v2 request with a field the protocol does not define is refused rather than ignored.

KServe 0.21's ``ModelServer`` binds REST to ``0.0.0.0`` and gRPC to ``[::]`` whatever it is
asked (see FIELD-NOTES). :class:`FlywheelModelServer` starts the same REST server (KServe's
``RESTServer`` and FastAPI app, so the v1/v2 routes, health, ``/metrics`` and error handlers
are KServe's) but binds it to the host it is given, ``127.0.0.1`` unless told otherwise, and
never starts gRPC: this service only speaks HTTP. It also switches off the per-request access
and timing log lines (Prometheus has the numbers; a log line per request costs throughput),
and runs the server on uvloop, which uvicorn would pick by itself were it started with
``Server.run()`` rather than awaited inside KServe's ``asyncio.run()`` (the largest single
gain in ``bench/serving.py``: from about 1.2x to 3x+ the throughput of ``mlflow models serve``).

:class:`RequestGuard` is a small ASGI middleware. On the two predict routes, a body over the
size limit is refused before it is read into memory, a body that is not JSON is refused (a
missing Content-Type means JSON, and ``application/json; charset=utf-8`` is understood, which
KServe's exact header comparison would not), in v2 (whose JSON FastAPI parses with pydantic
models that silently drop unknown keys) unknown fields at the request, input and output level
are refused with a 400 that names them, and a method other than POST gets 405 (KServe's
``GET /v1/models/{name}`` would otherwise take ``digits:predict`` for a model name and answer
404). On every route it counts the 4xx responses by reason (:mod:`ml_tasks.serving.refusals`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from kserve import ModelServer
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.rest.server import RESTServer

from ml_tasks.serving.metrics import serving_metrics
from ml_tasks.serving.readiness import FlywheelDataPlane, not_ready_handlers
from ml_tasks.serving.refusals import (
    REASON_SLOT,
    bad_input_as_400,
    default_reason,
    unknown_model_as_404,
    validation_error_as_400,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

V2_REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs"})
V2_INPUT_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
V2_OUTPUT_FIELDS = frozenset({"name", "parameters"})
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


def unknown_v2_fields(body: bytes) -> str | None:
    """A message naming the fields of a v2 JSON request the protocol does not define, or None.

    Bodies that are not JSON objects are left to FastAPI, whose error becomes a 400 anyway.
    """
    import orjson

    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"the request body is not valid JSON: {exc}"
    if not isinstance(request, dict):
        return None
    problems = _unknown(request, V2_REQUEST_FIELDS, "the request")
    for key, known in (("inputs", V2_INPUT_FIELDS), ("outputs", V2_OUTPUT_FIELDS)):
        items = request.get(key)
        if isinstance(items, list):
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    problems += _unknown(item, known, f"{key}[{i}]")
    return "; ".join(problems) or None


def _unknown(mapping: dict[str, Any], known: frozenset[str], where: str) -> list[str]:
    extra = sorted(k for k in mapping if k not in known)
    if not extra:
        return []
    return [
        f"{where}: unknown field(s) {', '.join(map(repr, extra))} (the Open Inference Protocol "
        f"defines {', '.join(sorted(known))})"
    ]


def _predict_protocol(path: str) -> str | None:
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


def _model_in_path(path: str) -> str | None:
    """``digits`` for ``/v1/models/digits:predict``, ``/v2/models/digits/infer`` and the like."""
    for prefix in ("/v1/models/", "/v2/models/"):
        if path.startswith(prefix):
            return path[len(prefix) :].split("/", 1)[0].split(":", 1)[0] or None
    return None


class RequestGuard:
    """ASGI middleware: bounded request bodies and strict v2 fields on the predict routes;
    every 4xx counted by reason."""

    def __init__(
        self,
        app: ASGIApp,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        served: Callable[[str], bool] = lambda name: False,
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.served = served
        self.metrics = serving_metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reason: list[str | None] = [None]
        protocol = _predict_protocol(scope["path"])

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self._count(scope["path"], protocol, message["status"], reason[0])
            await send(message)

        scope = {**scope, REASON_SLOT: reason}
        if protocol is None:
            await self.app(scope, receive, counted)
        elif scope["method"] != "POST":
            reason[0] = "method_not_allowed"
            await self._refuse(
                counted,
                f"{scope['path']} takes POST, not {scope['method']}",
                status=405,
                headers=[(b"allow", b"POST")],
            )
        else:
            await self._guard(scope, receive, counted, protocol, reason)

    def _count(self, path: str, protocol: str | None, status: int, reason: str | None) -> None:
        name = _model_in_path(path)
        # Label values come from a fixed set: a name nobody serves is not one of them.
        model = name if name is not None and self.served(name) else ""
        self.metrics.refused.labels(model, str(status), reason or default_reason(status)).inc()
        if protocol is not None and model:
            self.metrics.requests.labels(model, protocol, "bad_input").inc()

    async def _guard(
        self, scope: Scope, receive: Receive, send: Send, protocol: str, reason: list[str | None]
    ) -> None:
        """The predict routes: content type, body size, and (v2) unknown fields."""
        headers = dict(scope["headers"])
        declared_type = headers.get(b"content-type") or b"application/json"  # none (or empty)
        media = declared_type.split(b";")[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            reason[0] = "wrong_content_type"
            await self._refuse(
                send,
                (
                    f"the predict endpoints take JSON: send Content-Type: application/json (got "
                    f"{declared_type.decode(errors='replace')!r})"
                ),
            )
            return
        # KServe compares the header to a fixed list: no parameters, and always present.
        scope = {
            **scope,
            "headers": [
                *((k, v) for k, v in scope["headers"] if k != b"content-type"),
                (b"content-type", media),
            ],
        }
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            reason[0] = "body_too_large"
            await self._refuse(send, self._too_big(int(declared)))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                reason[0] = "body_too_large"
                await self._refuse(send, self._too_big(size))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if protocol == "v2" and (problem := unknown_v2_fields(body)) is not None:
            reason[0] = (
                "not_json" if problem.startswith("the request body is not") else "unknown_field"
            )
            await self._refuse(send, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_big(self, size: int) -> str:
        return f"the request body of {size}+ bytes is over the limit of {self.max_request_bytes}"

    @staticmethod
    async def _refuse(
        send: Send,
        message: str,
        status: int = 400,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        import orjson

        body = orjson.dumps({"error": message})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class FlywheelModelServer(ModelServer):
    """KServe's REST server on a chosen host, without gRPC, with :class:`RequestGuard`."""

    def __init__(
        self,
        *,
        host: str,
        http_port: int,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        access_log: bool = False,
    ) -> None:
        super().__init__(
            http_port=http_port,
            enable_grpc=False,
            enable_latency_logging=False,
            enable_docs_url=False,
            workers=1,
        )
        self.host = host
        self.max_request_bytes = max_request_bytes
        self.access_log = access_log
        self.dataplane = FlywheelDataPlane(model_registry=self.registered_models)

    def start(self, models: list[Any]) -> None:
        """Like ``ModelServer.start`` with one REST worker and no gRPC, bound to ``self.host``;
        models not ready yet are served too (KServe refuses to start without a ready one): they
        answer 503 with their reason until they are."""
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING

        for model in models:
            self.register_model(model)
            model.start()
        self._rest_server = FlywheelRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=None,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        # RESTServer hard-codes 0.0.0.0; uvicorn reads the host when it binds, so set it first.
        self._rest_server.config.host = self.host
        self._rest_server.max_request_bytes = self.max_request_bytes
        self._rest_server.access_log = self.access_log
        if not self.access_log:
            # What uvicorn's Config(access_log=False) does, which RESTServer does not pass.
            logging.getLogger("uvicorn.access").handlers = []
            logging.getLogger("uvicorn.access").propagate = False
        self.servers.append(self._rest_server.start())
        # ModelServer.start configures the current loop (exception handler, executor), then
        # asyncio.run() makes a new one: run on the configured loop instead, and on uvloop when
        # installed (uvicorn's loop="auto" means it, but only its Server.run() applies it).
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            asyncio.set_event_loop(runner.get_loop())
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


class FlywheelRESTServer(RESTServer):
    """KServe's ``RESTServer`` plus the guard, 400s for malformed v2 bodies, quiet 4xx logs."""

    max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
    access_log = False

    def _add_middlewares(self, app: Any) -> None:
        # KServe's timing middleware logs two lines per request: only with --access-log.
        if self.access_log:
            super()._add_middlewares(app)
        app.add_middleware(
            RequestGuard, max_request_bytes=self.max_request_bytes, served=self._served
        )

    def _served(self, name: str) -> bool:
        return self.dataplane.model_registry.get_model(name) is not None

    def _add_exception_handlers(self, app: Any) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(InvalidInput, bad_input_as_400)
        app.add_exception_handler(RequestValidationError, validation_error_as_400)
        app.add_exception_handler(ModelNotFound, unknown_model_as_404)
        for exc_type, handler in not_ready_handlers(self.dataplane).items():
            app.add_exception_handler(exc_type, handler)
