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

:class:`RequestGuard` is a small ASGI middleware on the two predict routes: a body over the
size limit is refused before it is read into memory, a body that is not JSON is refused (a
missing Content-Type means JSON, and ``application/json; charset=utf-8`` is understood, which
KServe's exact header comparison would not), and in v2 (whose JSON FastAPI parses with
pydantic models that silently drop unknown keys) unknown fields at the request, input and
output level are refused with a 400 that names them. FastAPI's 422 for a malformed v2 body
becomes a 400 too, so every bad request gets the same status and ``{"error": ...}`` shape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.exceptions import RequestValidationError
from kserve import ModelServer
from kserve.errors import InvalidInput
from kserve.protocol.rest.server import RESTServer

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


class RequestGuard:
    """ASGI middleware: bounded request bodies and strict v2 fields on the predict routes."""

    def __init__(self, app: ASGIApp, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = None
        if scope["type"] == "http" and scope["method"] == "POST":
            protocol = _predict_protocol(scope["path"])
        if protocol is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared_type = headers.get(b"content-type") or b"application/json"  # none (or empty)
        media = declared_type.split(b";")[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
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
                await self._refuse(send, self._too_big(size))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if protocol == "v2" and (problem := unknown_v2_fields(body)) is not None:
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
    async def _refuse(send: Send, message: str) -> None:
        import orjson

        body = orjson.dumps({"error": message})
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def validation_error_as_400(request: Any, exc: Any) -> Any:
    """FastAPI's 422 for a v2 body that does not fit the protocol, as KServe's 400 shape."""
    problems = [
        f"{'.'.join(str(p) for p in err.get('loc', ())[1:]) or 'body'}: {err.get('msg')}"
        for err in exc.errors()[:5]
    ]
    return await bad_input_as_400(request, "invalid inference request: " + "; ".join(problems))


async def bad_input_as_400(request: Any, exc: Any) -> Any:
    """A 400 with the message, logged as one line (KServe logs a traceback per bad request)."""
    from fastapi.responses import JSONResponse
    from kserve.logging import logger

    logger.info("bad request to %s: %s", request.url.path, exc)
    return JSONResponse(status_code=400, content={"error": str(exc)})


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

    def start(self, models: list[Any]) -> None:
        """Like ``ModelServer.start`` with one REST worker and no gRPC, bound to ``self.host``."""
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING

        self._register_and_check_atleast_one_model_is_ready(models)
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
    """KServe's ``RESTServer`` plus the guard, 400s for malformed v2 bodies, quiet 400 logs."""

    max_request_bytes = DEFAULT_MAX_REQUEST_BYTES
    access_log = False

    def _add_middlewares(self, app: Any) -> None:
        # KServe's timing middleware logs two lines per request: only with --access-log.
        if self.access_log:
            super()._add_middlewares(app)
        app.add_middleware(RequestGuard, max_request_bytes=self.max_request_bytes)

    def _add_exception_handlers(self, app: Any) -> None:
        super()._add_exception_handlers(app)
        app.add_exception_handler(InvalidInput, bad_input_as_400)
        app.add_exception_handler(RequestValidationError, validation_error_as_400)
