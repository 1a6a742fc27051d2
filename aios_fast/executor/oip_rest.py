"""The Open Inference Protocol's REST form (KServe v2) on the executor's HTTP port,
beside the seeds' ``/v1`` API (``executor.http_front``):

    GET  /v2/health/live                                 {"live": true}
    GET  /v2/health/ready                                {"ready": ...} (503 when not)
    GET  /v2                                             server metadata
    GET  /v2/models/{name}[/versions/{v}]                model metadata (the declaration)
    GET  /v2/models/{name}[/versions/{v}]/ready          {"name", "ready"} (503 when not)
    POST /v2/models/{name}[/versions/{v}]/infer          JSON tensors, or Triton's binary
                                                         tensor extension

An inference's body is not parsed here: the model is the URL's, the body travels to an
instance framed with its JSON header's length (``Inference-Header-Content-Length``, or
all of it) as a ``wire.OIP_REST`` task (``executor.oip_run``), and the instance's answer
comes back the same way: JSON (``application/json``), or JSON then binary outputs with
``Inference-Header-Content-Length`` set. Same guarantees as ``/v1``: the infer role's
token, ``X-Aios-Timeout`` deadlines, the body limit (``max_message`` - 4 bytes: the
framing), the books. Errors: ``{"error": message, "code": gRPC status name}`` with the
HTTP status of ``http_front.STATUS`` (400 bad tensors, 404 unknown model, ...).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

import grpc
from aiohttp import web

from .. import __version__
from ..auth import AuthError
from ..oip import Answers, InvalidTensor, UnknownModel, frame_rest, unframe_rest
from .grpcio_front import DEADLINE_SLACK, FrontDispatch
from .task_run import Reject

__all__ = ["HEADER_LENGTH", "Front", "OipRest"]

HEADER_LENGTH = "Inference-Header-Content-Length"
_C = grpc.StatusCode


class Front(Protocol):
    """What the routes share with the HTTP front (``http_front.HttpFront``): its
    dispatch, message limit and the bytes all bodies being read may hold."""

    dispatch: FrontDispatch
    max_message: int
    buffered: int
    body_budget: int


class OipRest:
    """The ``/v2`` routes of ``front``; ``error(code, message, status=None)`` makes an
    error response (the HTTP front's own)."""

    def __init__(self, front: Front, error: Callable[..., web.Response]) -> None:
        assert front.dispatch.oip is not None
        self.front = front
        self._error = error
        self.oip = front.dispatch.oip
        self.model = self.oip.model
        self.max_body = front.max_message - 4  # (the task's framing: oip.frame_rest)

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v2/health/live", self._live)
        r.add_get("/v2/health/ready", self._ready)
        r.add_get("/v2", self._server)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.add_get(base, self._metadata)
            r.add_get(base + "/ready", self._model_ready)
            r.add_get(base + "/config", self._config)
            r.add_post(base + "/infer", self._infer)

    # ------------------------------------------------------------------ answers

    def _refused(self, request: web.Request) -> web.Response | None:
        """The token check (infer role), then the model named by the URL."""
        auth = self.front.dispatch.auth
        if auth.requires("infer"):
            try:
                auth.check(request.headers.get("Authorization"), "infer")
            except AuthError as exc:
                code = _C.UNAUTHENTICATED if exc.status == 401 else _C.PERMISSION_DENIED
                return self._error(code, str(exc), exc.status)
        if "name" in request.match_info:
            try:
                self.model.check(request.match_info["name"], request.match_info.get("version", ""))
            except UnknownModel as exc:
                return self._error(_C.NOT_FOUND, str(exc))
        return None

    async def _live(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response({"live": True})

    async def _ready(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        ready = self.oip.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _server(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response(
            {"name": "aios-fast", "version": __version__, "extensions": list(Answers.EXTENSIONS)}
        )

    async def _metadata(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response(self.model.metadata_json())

    async def _config(self, request: web.Request) -> web.Response:
        return self._refused(request) or web.json_response(self.model.config_json())

    async def _model_ready(self, request: web.Request) -> web.Response:
        if refused := self._refused(request):
            return refused
        ready = self.oip.ready()
        return web.json_response({"name": self.model.name, "ready": ready},
                                 status=200 if ready else 503)  # fmt: skip

    # ------------------------------------------------------------------ inference

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refused(request):
            return refused
        front = self.front
        timeout: float | None = None
        if (value := request.headers.get("X-Aios-Timeout")) is not None:
            try:
                timeout = float(value)
            except ValueError:
                timeout = -1.0
            if not (0 < timeout < 1e9) or math.isnan(timeout):
                return self._error(_C.INVALID_ARGUMENT, "X-Aios-Timeout must be seconds > 0")
        length = request.content_length
        if length is None:
            return self._error(_C.INVALID_ARGUMENT, "a Content-Length header is required", 411)
        if length > self.max_body:
            return self._error(_C.RESOURCE_EXHAUSTED, f"a body of {length:,} bytes is over the "
                               f"{self.max_body:,}-byte limit", 413)  # fmt: skip
        if front.buffered + length > front.body_budget:
            return self._error(_C.RESOURCE_EXHAUSTED, "too many request bytes being read; "
                                                      "retry later")  # fmt: skip
        header = request.headers.get(HEADER_LENGTH)
        try:
            header_length = length if header is None else int(header)
            if not 0 <= header_length <= length:
                raise ValueError
        except ValueError:
            return self._error(_C.INVALID_ARGUMENT, f"{HEADER_LENGTH} must be 0..{length}")
        front.buffered += length
        try:
            body = await request.read()
        finally:
            front.buffered -= length
        route = (request.match_info["name"], request.match_info.get("version", ""))
        run = self.oip.run_rest(route, frame_rest(header_length, body), timeout)
        try:
            if timeout is not None:
                run = asyncio.wait_for(run, timeout + DEADLINE_SLACK)
            answer = await run
        except Reject as exc:
            return self._error(exc.code, exc.message)
        except asyncio.TimeoutError:  # the run was cancelled (its task at the instance too)
            return self._error(_C.DEADLINE_EXCEEDED, "deadline exceeded")
        try:
            json_length, out = unframe_rest(answer)
        except InvalidTensor as exc:
            return self._error(_C.INTERNAL, f"the instance's answer: {exc}")
        if json_length == len(out):
            return web.Response(body=bytes(out), content_type="application/json")
        return web.Response(body=bytes(out), content_type="application/octet-stream",
                            headers={HEADER_LENGTH: str(json_length)})  # fmt: skip
