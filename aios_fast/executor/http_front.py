"""The executor's HTTP/JSON way in to the seeds' API (``--http-port``; the block
document's ``initSettings.ports.http``), for callers without gRPC (``curl``):

    POST /v1/blocks/{id}/infer        an AIOSPacket as JSON -> the output packet as JSON
    GET  /v1/openapi.json             the OpenAPI 3 document of this API
    GET  /v1/docs                     a page rendering that document (no CDN assets)
    /v2/...                           the Open Inference Protocol's REST form
                                      (``executor.oip_rest``)

The request's fields are the packet's: ``session_id``, ``seq_no``, ``data`` (a string;
any other JSON value is sent as its JSON text), ``ts``, ``frame_ptr`` (a string),
``output_ptr`` and ``files`` (``[{"metadata": str, "file_data": base64}]``). The task
goes through the executor's router exactly as a gRPC ``infer_result`` does (books,
limits, drain, retries on other instances); ``?wait=false`` is the seeds' ``infer``
(answered 202 ``{"accepted": true}`` once an instance took it).

- Auth: ``Authorization: Bearer <token>`` with the infer role (when tokens are set).
- Deadline: ``X-Aios-Timeout: <seconds>``; past it, 504 and the task is cancelled.
- Limits: the encoded task may be ``max_message`` bytes (413 past it), as on gRPC; a
  body is refused at its headers (Content-Length required) when over ``6 x
  max_message`` or past what all bodies being read may hold at once (``BODY_BUDGET``).
- Errors: ``{"error": message, "code": grpc status name}`` with the HTTP status of
  ``STATUS`` (UNAVAILABLE 503, DEADLINE_EXCEEDED 504, RESOURCE_EXHAUSTED 429, ...).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from typing import Any

import grpc
import msgspec
from aiohttp import web

from .. import codec
from ..auth import AuthError
from ..tls import TLS
from ..wire import ACCEPTED
from .grpcio_front import DEADLINE_SLACK, FrontDispatch
from .oip_rest import OipRest
from .task_run import Reject

__all__ = ["BODY_BUDGET", "OPENAPI_PATH", "STATUS", "TIMEOUT_HEADER", "HttpFront", "openapi",
           "packet_json"]  # fmt: skip

TIMEOUT_HEADER = "X-Aios-Timeout"
BODY_BUDGET = 256 * 1024 * 1024  # bytes all request bodies being read may hold at once
OPENAPI_PATH = "/v1/openapi.json"
_C = grpc.StatusCode
STATUS = {
    _C.INVALID_ARGUMENT: 400,
    _C.UNAUTHENTICATED: 401,
    _C.PERMISSION_DENIED: 403,
    _C.NOT_FOUND: 404,
    _C.RESOURCE_EXHAUSTED: 429,
    _C.CANCELLED: 499,
    _C.INTERNAL: 500,
    _C.UNIMPLEMENTED: 501,
    _C.UNAVAILABLE: 503,
    _C.DEADLINE_EXCEEDED: 504,
}
_AUTH_CODES = {401: _C.UNAUTHENTICATED, 403: _C.PERMISSION_DENIED}


class _File(msgspec.Struct, forbid_unknown_fields=True):
    metadata: str = ""
    file_data: str = ""  # base64


class _Packet(msgspec.Struct, forbid_unknown_fields=True):
    session_id: str = ""
    seq_no: int = 0
    data: Any = ""
    ts: float = 0.0
    frame_ptr: str = ""
    output_ptr: str = ""
    files: list[_File] = []


_decoder = msgspec.json.Decoder(_Packet)


def _error(code: grpc.StatusCode, message: str, status: int | None = None) -> web.Response:
    return web.json_response(
        {"error": " ".join(message.split()), "code": code.name},
        status=status or STATUS.get(code, 500),
    )


def _frame(body: bytes) -> bytes:
    """The InferenceMessage a JSON request stands for; Reject(INVALID_ARGUMENT) if bad."""
    try:
        p = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Reject(_C.INVALID_ARGUMENT, f"bad packet: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Reject(_C.INVALID_ARGUMENT, f"the body is not JSON: {exc}") from None
    data = p.data if isinstance(p.data, str) else json.dumps(p.data)
    try:
        files = [
            codec.FileInfo(f.metadata, base64.b64decode(f.file_data, validate=True))
            for f in p.files
        ]
    except (binascii.Error, ValueError):
        raise Reject(_C.INVALID_ARGUMENT, "bad packet: files[].file_data is not base64") from None
    if not 0 <= p.seq_no < 2**63:
        raise Reject(_C.INVALID_ARGUMENT, "bad packet: seq_no must be in [0, 2**63)")
    return codec.encode_message(
        codec.Packet(
            session_id=p.session_id,
            seq_no=p.seq_no,
            frame_ptr=p.frame_ptr.encode(),
            data=data,
            ts=p.ts,
            output_ptr=p.output_ptr,
            files=files,
        )
    )


def packet_json(packet) -> dict:
    """An output packet as the JSON this front answers (files base64)."""
    return {
        "session_id": packet.session_id,
        "seq_no": packet.seq_no,
        "data": packet.data,
        "ts": packet.ts,
        "frame_ptr": bytes(packet.frame_ptr).decode(errors="replace"),
        "output_ptr": packet.output_ptr,
        "files": [
            {"metadata": f.metadata, "file_data": base64.b64encode(bytes(f.file_data)).decode()}
            for f in packet.files
        ],
    }


class HttpFront:
    """``POST /v1/blocks/{block_id}/infer`` through ``dispatch`` (see the module)."""

    def __init__(self, dispatch: FrontDispatch, block_id: str, max_message: int, tls: TLS) -> None:
        self.dispatch = dispatch
        self.block_id = block_id
        self.max_message = max_message
        self.tls = tls
        self.port: int | None = None
        # base64 and JSON escapes make a body up to ~6x a packet's bytes (data of control
        # characters); the task's own size is checked once encoded. Bodies are refused at
        # their headers: over max_body (413), or past the bytes all bodies being read may
        # hold at once (429), before any of it is read.
        self.max_body = 6 * max_message + 64 * 1024
        self.body_budget = max(BODY_BUDGET, 2 * self.max_body)
        self.buffered = 0  # bytes of the bodies being read and decoded now
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/v1/blocks/{block}/infer", self._infer)
        app.router.add_get(OPENAPI_PATH, self._openapi)
        app.router.add_get("/v1/docs", self._docs)
        if dispatch.oip is not None:  # the Open Inference Protocol's REST form: /v2
            OipRest(self, _error).add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            host,
            port,
            ssl_context=self.tls.server_context(),
            reuse_port=reuse_port or None,
        )
        await site.start()
        server = site._server  # aiohttp keeps the bound sockets there
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        auth = self.dispatch.auth
        if auth.requires("infer"):
            try:
                auth.check(request.headers.get("Authorization"), "infer")
            except AuthError as exc:
                return _error(_AUTH_CODES[exc.status], str(exc), exc.status)
        if request.match_info["block"] != self.block_id:
            return _error(
                _C.NOT_FOUND,
                f"no block {request.match_info['block']!r} here (this is {self.block_id!r})",
            )
        wait = request.query.get("wait", "true").lower() not in ("false", "0", "no")
        timeout: float | None = None
        if TIMEOUT_HEADER in request.headers:
            try:
                timeout = float(request.headers[TIMEOUT_HEADER])
            except ValueError:
                timeout = -1.0
            if not (0 < timeout < 1e9) or math.isnan(timeout):
                return _error(_C.INVALID_ARGUMENT, f"{TIMEOUT_HEADER} must be seconds > 0")
        length = request.content_length
        if length is None:
            return _error(_C.INVALID_ARGUMENT, "a Content-Length header is required", 411)
        if length > self.max_body:
            return _error(_C.RESOURCE_EXHAUSTED, f"a body of {length:,} bytes is over the "
                                                 f"{self.max_body:,}-byte limit", 413)  # fmt: skip
        if self.buffered + length > self.body_budget:
            return _error(_C.RESOURCE_EXHAUSTED, "too many request bytes being read; retry later")
        self.buffered += length
        try:
            body = await request.read()
            frame = _frame(body)
        except web.HTTPRequestEntityTooLarge:
            return _error(_C.RESOURCE_EXHAUSTED, "request body too large", 413)
        except Reject as exc:
            return _error(exc.code, exc.message)
        finally:
            self.buffered -= length
        if len(frame) > self.max_message:
            return _error(
                _C.RESOURCE_EXHAUSTED,
                f"task of {len(frame):,} bytes is over the {self.max_message:,}-byte limit",
                413,
            )
        run = self.dispatch.router.run(frame, wait, timeout)
        try:
            if timeout is None:
                answer = await run
            else:
                answer = await asyncio.wait_for(run, timeout + DEADLINE_SLACK)
        except Reject as exc:
            return _error(exc.code, exc.message)
        except asyncio.TimeoutError:  # the run was cancelled (its task at the instance too)
            return _error(_C.DEADLINE_EXCEEDED, "deadline exceeded")
        if not wait:
            return web.json_response({"accepted": answer == ACCEPTED}, status=202)
        return web.json_response(packet_json(codec.decode_message(answer)))

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi(self.block_id))

    async def _docs(self, request: web.Request) -> web.Response:
        return web.Response(text=_DOCS_PAGE, content_type="text/html")


def openapi(block_id: str) -> dict:
    """The OpenAPI 3.0 document of this front."""
    file = {
        "type": "object",
        "properties": {
            "metadata": {"type": "string"},
            "file_data": {"type": "string", "format": "byte", "description": "base64"},
        },
    }
    packet = {
        "type": "object",
        "description": "The seeds' AIOSPacket",
        "properties": {
            "session_id": {"type": "string"},
            "seq_no": {"type": "integer", "format": "int64", "minimum": 0},
            "data": {
                "type": "string",
                "description": "the task's data (another JSON value is sent as its JSON text)",
            },
            "ts": {"type": "number"},
            "frame_ptr": {"type": "string"},
            "output_ptr": {"type": "string"},
            "files": {"type": "array", "items": file},
        },
    }
    error = {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "string", "description": "gRPC status name"},
        },
    }
    err = {
        "description": "failed",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    responses: dict[str, Any] = {
        "200": {
            "description": "the output packet",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Packet"}}},
        },
        "202": {
            "description": "taken by an instance (wait=false)",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"accepted": {"type": "boolean"}}}
                }
            },
        },
    }
    for status, _ in sorted({(str(s), c) for c, s in STATUS.items()}):
        responses.setdefault(status, err)
    responses["411"] = responses["413"] = err
    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"aios-fast block {block_id}",
            "version": "1",
            "description": "The seeds' InferenceProxy over HTTP/JSON",
        },
        "paths": {
            "/v1/blocks/{id}/infer": {
                "post": {
                    "summary": "Run one task on the block",
                    "operationId": "infer",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": [block_id]},
                        },
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean", "default": True},
                            "description": "false: answer once an instance took the task",
                        },
                        {
                            "name": TIMEOUT_HEADER,
                            "in": "header",
                            "required": False,
                            "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                            "description": "deadline, seconds",
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Packet"}}
                        },
                    },
                    "responses": responses,
                    "security": [{"bearer": []}, {}],
                }
            }
        },
        "components": {
            "schemas": {"Packet": packet, "Error": error},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# A page that renders the OpenAPI document (Swagger UI's assets would come from a CDN,
# which a block's network may not reach): each operation, its parameters and a form.
_DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>aios-fast block API</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}pre{background:#eee;
padding:.5em;white-space:pre-wrap}textarea{width:100%;height:8em}</style></head>
<body><h1 id="title">aios-fast block API</h1><p><a href="openapi.json">openapi.json</a></p>
<div id="ops"></div>
<script>
fetch("openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("title").textContent = doc.info.title;
  const ops = document.getElementById("ops");
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const id = (op.parameters || []).find(p => p.in === "path");
      const url = path.replace("{id}", id && id.schema.enum ? id.schema.enum[0] : "");
      const box = document.createElement("section");
      box.innerHTML = `<h2>${method.toUpperCase()} ${path}</h2><p>${op.summary}</p>
        <pre>${JSON.stringify(op.parameters, null, 1)}</pre>
        <p>token <input id="tok" size="40"> timeout <input id="tmo" size="6"></p>
        <textarea id="body">{"session_id": "s", "seq_no": 1, "data": "{}"}</textarea>
        <button id="go">send</button><pre id="out"></pre>`;
      ops.appendChild(box);
      box.querySelector("#go").onclick = async () => {
        const headers = {"Content-Type": "application/json"};
        const tok = box.querySelector("#tok").value, tmo = box.querySelector("#tmo").value;
        if (tok) headers["Authorization"] = "Bearer " + tok;
        if (tmo) headers["X-Aios-Timeout"] = tmo;
        const r = await fetch(url, {method: method.toUpperCase(), headers,
                                           body: box.querySelector("#body").value});
        box.querySelector("#out").textContent = r.status + "\\n" + await r.text();
      };
    }
  }
});
</script></body></html>
"""
