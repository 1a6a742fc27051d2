"""The executor's grpc.aio front (``--front grpcio``): the seeds' ``InferenceProxy`` on
generic handlers over raw bytes, for where the native front is not built.

Its semantics are the native front's (``executor.native_server``), through the same
``FrontDispatch``: the infer role checked at each call's headers, before its request is
read (``InferenceHandlers``), deadlines (grpc's own, plus a
backstop ``DEADLINE_SLACK`` later), ``infer_stream`` answering each task as it finishes
(a failed task's answer is an error packet) with at most ``stream_window`` tasks of a
stream running, a caller that leaves having its tasks cancelled at their instances.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial

import grpc

from ..auth import Auth, AuthError
from ..service.grpc_auth import refusal, token_of
from ..tls import TLS
from ..wire import OIP_METHODS, OIP_SERVICE, SERVICE
from .oip_run import OipCalls
from .router import Router
from .task_run import Reject, error_answer

__all__ = ["DEADLINE_SLACK", "STREAM_WINDOW", "FrontDispatch", "GrpcioFront", "InferenceHandlers"]

DEADLINE_SLACK = 0.05  # seconds past a caller's deadline before the executor gives up
STREAM_WINDOW = 1024  # tasks of one infer_stream started and not yet read by its caller


@dataclass
class FrontDispatch:
    """What every front hands its calls to: the router, the token check and the
    per-stream window (both fronts, one source)."""

    router: Router
    auth: Auth
    instance_inflight: int
    oip: OipCalls | None = None  # the Open Inference Protocol's calls (aios_fast.oip)

    @property
    def stream_window(self) -> int:
        """Tasks one infer_stream may have running: never more than one instance takes
        (instance_inflight), so a lone stream is slowed down rather than answered
        RESOURCE_EXHAUSTED for what it sent past that."""
        return max(1, min(STREAM_WINDOW, self.instance_inflight))


@dataclass
class ServerOptions:
    """grpc.aio server settings (from ExecutorConfig)."""

    max_inflight: int
    max_message: int
    reuse_port: bool
    keepalive: float
    keepalive_timeout: float


class GrpcioFront:
    def __init__(self, dispatch: FrontDispatch, options: ServerOptions) -> None:
        self.dispatch = dispatch
        self.options = options
        self.server = grpc.aio.server(options=self._server_options())
        self.server.add_generic_rpc_handlers((InferenceHandlers(SERVICE, {
            "infer": grpc.unary_unary_rpc_method_handler(self._infer),
            "infer_result": grpc.unary_unary_rpc_method_handler(self._infer_result),
            "infer_stream": grpc.stream_stream_rpc_method_handler(self._infer_stream),
        }, dispatch.auth),))  # fmt: skip
        if dispatch.oip is not None:  # the Open Inference Protocol, on the same port
            oip = {name: grpc.unary_unary_rpc_method_handler(partial(self._oip_answer, name))
                   for name in OIP_METHODS}  # fmt: skip
            oip["ModelInfer"] = grpc.unary_unary_rpc_method_handler(self._model_infer)
            oip["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(self._model_stream)
            self.server.add_generic_rpc_handlers(
                (InferenceHandlers(OIP_SERVICE, oip, dispatch.auth),)
            )

    def bind(self, tls: TLS, host: str, port: int) -> int:
        return tls.bind(self.server, f"{host}:{port}")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)

    # ------------------------------------------------------------------ handlers

    # (tokens: checked at each call's headers, before its request is read, by the
    # method lookup: InferenceHandlers)

    async def _unary(self, frame: bytes, context, want_result: bool, run=None) -> bytes:
        if run is None:
            run = partial(self.dispatch.router.run, want_result=want_result)
        remaining = context.time_remaining()
        try:
            if remaining is None:
                return await run(frame, timeout=None)
            # grpc itself ends the call at its deadline (cancelling this handler); the
            # timer here is a backstop, a little later, so the two do not race
            budget = remaining + DEADLINE_SLACK
            return await asyncio.wait_for(run(frame, timeout=remaining), budget)
        except Reject as exc:
            await context.abort(exc.code, exc.message)
        except asyncio.TimeoutError:
            if not context.done():
                try:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
                except grpc.aio.AbortError:
                    raise
                except Exception:  # the call ended meanwhile: nothing left to tell
                    pass
        return b""  # the call is over: nobody reads this

    async def _infer(self, frame: bytes, context) -> bytes:
        return await self._unary(frame, context, False)

    async def _infer_result(self, frame: bytes, context) -> bytes:
        return await self._unary(frame, context, True)

    async def _oip_answer(self, rpc: str, request: bytes, context) -> bytes:
        assert self.dispatch.oip is not None
        try:
            return self.dispatch.oip.answer(rpc, request)
        except Reject as exc:
            await context.abort(exc.code, exc.message)
        return b""

    async def _model_infer(self, frame: bytes, context) -> bytes:
        assert self.dispatch.oip is not None
        return await self._unary(frame, context, True, self.dispatch.oip.run)

    async def _model_stream(self, requests, context) -> AsyncIterator[bytes]:
        oip = self.dispatch.oip
        assert oip is not None
        async for answer in self._stream(requests, context, oip.run, oip.stream_answer):
            yield answer

    async def _infer_stream(self, requests, context) -> AsyncIterator[bytes]:
        """Tasks pipelined on one stream; each answer is its output, or an error packet
        (``wire.error_packet``) for a task that failed: one bad task fails alone."""
        router = self.dispatch.router

        def answer(out: bytes | None, reject: Reject | None, frame: bytes) -> bytes:
            return error_answer(frame, reject) if reject is not None else out  # type: ignore[return-value]

        async for item in self._stream(requests, context, partial(router.run, want_result=True),
                                       answer):  # fmt: skip
            yield item

    async def _stream(self, requests, context, run, answer) -> AsyncIterator[bytes]:
        """A stream's requests run side by side (``run(frame, timeout)``), each answered
        as it ends (``answer(output, reject, frame)``)."""
        results: asyncio.Queue = asyncio.Queue()
        pending: set[asyncio.Task] = set()
        # back-pressure: a caller that does not read its answers stops being read
        window = asyncio.Semaphore(self.dispatch.stream_window)

        async def one(frame: bytes) -> None:
            try:
                out = await run(frame, timeout=context.time_remaining())
            except Reject as exc:
                await results.put(answer(None, exc, frame))
            else:
                await results.put(answer(out, None, frame))

        async def read() -> None:
            async for frame in requests:
                await window.acquire()
                t = asyncio.ensure_future(one(frame))
                pending.add(t)
                t.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)
            await results.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await results.get()) is not None:
                yield item
                window.release()
        finally:
            reader.cancel()
            for t in list(pending):  # the caller left: its tasks are cancelled too
                t.cancel()

    # ------------------------------------------------------------------ options

    def _server_options(self) -> list[tuple[str, int]]:
        opts = self.options
        # grpc core queues calls not yet handed to Python; past its default limits (1,000
        # / 3,000) a burst's calls are CANCELLED before any handler sees them. Let the
        # executor's own max_inflight decide instead (RESOURCE_EXHAUSTED past it).
        pending = max(2 * opts.max_inflight, 20_000)
        return [("grpc.so_reuseport", 1 if opts.reuse_port else 0),
                ("grpc.max_receive_message_length", opts.max_message),
                ("grpc.max_send_message_length", opts.max_message),
                ("grpc.server.max_pending_requests", pending),
                ("grpc.server.max_pending_requests_hard_limit", pending),
                *keepalive_options(opts.keepalive, opts.keepalive_timeout)]  # fmt: skip


class InferenceHandlers(grpc.GenericRpcHandler):
    """The front's method lookup, where its token check lives: grpc.aio asks a generic
    handler for a call's handler as soon as the call's HEADERS are in (method and
    metadata), before any of its request is read. With a token required, a call
    without the infer role gets a handler that reads nothing and answers
    UNAUTHENTICATED / PERMISSION_DENIED, so grpc never waits for or holds its body (a
    unary handler would read the whole message first). No interceptor: grpc.aio's
    interceptor path costs ~45 us a call; this lookup is the one grpc makes anyway.
    ``handlers``: method name (``infer``, ...) -> its handler."""

    def __init__(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler],
                 auth: Auth) -> None:  # fmt: skip
        self._handlers = {f"/{service}/{name}": h for name, h in handlers.items()}
        self._auth = auth

    def service(self, handler_call_details):
        handler = self._handlers.get(handler_call_details.method)
        if handler is None or not self._auth.requires("infer"):
            return handler
        try:
            self._auth.check(token_of(handler_call_details.invocation_metadata), "infer")
        except AuthError as exc:
            return _refuse(*refusal(exc))
        return handler


def _refuse(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that ends the call with ``code`` without reading its request (a
    stream-unary handler whatever the method's kind: the wire is the same)."""

    async def refuse(requests, context) -> bytes:
        await context.abort(code, message)
        return b""  # never reached (abort raises)

    return grpc.stream_unary_rpc_method_handler(refuse)


def keepalive_options(keepalive: float, keepalive_timeout: float) -> list[tuple[str, int]]:
    """The grpcio front's server keepalive: the same as the native front's."""
    never = 2**31 - 1  # grpc's largest (and "never") milliseconds
    if keepalive <= 0:
        return [("grpc.keepalive_time_ms", never)]
    idle = min(max(int(keepalive * 1000), 1), never)
    timeout = min(max(int(keepalive_timeout * 1000), 1), never)
    return [("grpc.keepalive_time_ms", idle),
            ("grpc.keepalive_timeout_ms", timeout),
            # as the native front: idle connections too, and with no data sent meanwhile
            ("grpc.http2.ping_timeout_ms", timeout),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0)]  # fmt: skip
