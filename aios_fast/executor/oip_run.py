"""The Open Inference Protocol's way through the executor (``aios_fast.oip``): the same
``TaskRun`` state machine, books, limits, deadlines and drain as the seeds' calls, with
the caller's ModelInferRequest read only as far as routing needs (model name, version,
id) and carried to an instance as it came (link kind ``wire.OIP``), whose
ModelInferResponse is the answer as it comes back.

``OipCalls`` is what both fronts hand OIP calls to: ``answer`` for the calls the
executor answers itself, ``start`` (callbacks, the native front) or ``run`` (awaited,
the grpcio front) for ModelInfer and each ModelStreamInfer request, ``stream_answer``
for a stream's answer to one request.
"""

from __future__ import annotations

import asyncio

import grpc

from .. import codec
from ..oip import (
    Answers,
    InvalidTensor,
    ModelSpec,
    UnknownModel,
    route_fields,
    stream_error,
    stream_ok,
)
from ..wire import OIP, OIP_REST
from .router import Router
from .task_run import OnDone, Reject, TaskRun

__all__ = ["OipCalls", "OipRestRun", "OipRun"]

_NOT_FOUND = grpc.StatusCode.NOT_FOUND
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _route_reader():
    """``oip.route_fields`` compiled (``aios_fast._front.oip_route``: ~20x less CPU)
    where the native front is built, its pure-Python twin elsewhere (the native front is
    optional: grpcio serves where libnghttp2's headers were missing)."""
    from .._select import use_extensions

    if use_extensions():
        try:
            from .._front import oip_route

            return oip_route
        except ImportError:
            pass
    return route_fields


read_route = _route_reader()


class OipRun(TaskRun):
    """One ModelInfer task (its answer: the instance's ModelInferResponse bytes)."""

    __slots__ = ("model", "request_id")
    kind = OIP

    def __init__(self, router: Router, model: ModelSpec, frame: bytes, timeout: float | None,
                 on_done: OnDone, call=None) -> None:  # fmt: skip
        super().__init__(router, frame, True, timeout, on_done, call)
        self.model = model
        self.request_id = ""

    def _read(self):
        try:
            name, version, self.request_id = read_route(self.frame)
            self.model.check(name, version)
        except InvalidTensor as exc:
            raise Reject(_INVALID, str(exc)) from None
        except UnknownModel as exc:
            raise Reject(_NOT_FOUND, str(exc)) from None
        # what a policy sees: the request's id as the session (requests are stateless)
        return codec.Packet(session_id=self.request_id)

    def _answer(self, out: bytes) -> bytes:
        return out


class OipRestRun(OipRun):
    """One REST inference (``wire.OIP_REST``): the model is named by the URL, the body
    travels framed (``oip.frame_rest``) and unread."""

    __slots__ = ("route",)
    kind = OIP_REST

    def __init__(self, router: Router, model: ModelSpec, route: tuple[str, str], frame: bytes,
                 timeout: float | None, on_done: OnDone, call=None) -> None:  # fmt: skip
        super().__init__(router, model, frame, timeout, on_done, call)
        self.route = route

    def _read(self):
        try:
            self.model.check(*self.route)
        except UnknownModel as exc:
            raise Reject(_NOT_FOUND, str(exc)) from None
        return codec.Packet()


class OipCalls:
    """The OIP side of a front: one per executor process."""

    def __init__(self, router: Router, model: ModelSpec) -> None:
        self.router = router
        self.model = model
        self._answers = Answers(model)

    def ready(self) -> bool:
        return not self.router.draining and any(r.link.up for r in self.router.hosts)

    def answer(self, rpc: str, request: bytes) -> bytes:
        """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata; Reject
        for a caller's mistake."""
        try:
            return self._answers.answer(rpc, request, self.ready())
        except InvalidTensor as exc:
            raise Reject(_INVALID, str(exc)) from None
        except UnknownModel as exc:
            raise Reject(_NOT_FOUND, str(exc)) from None

    def start(self, frame: bytes, timeout: float | None, on_done: OnDone, call=None) -> OipRun:
        run = OipRun(self.router, self.model, frame, timeout, on_done, call)
        run.start()
        return run

    async def run(self, frame: bytes, timeout: float | None) -> bytes:
        """One ModelInfer, awaited: the ModelInferResponse bytes, or Reject."""
        waiter = asyncio.get_running_loop().create_future()
        run = self.start(frame, timeout, _resolve, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            run.cancel()
            raise

    async def run_rest(self, route: tuple[str, str], frame: bytes,
                       timeout: float | None) -> bytes:  # fmt: skip
        """One REST inference, awaited: the instance's framed answer, or Reject."""
        waiter = asyncio.get_running_loop().create_future()
        run = OipRestRun(self.router, self.model, route, frame, timeout, _resolve, waiter)
        run.start()
        try:
            return await waiter
        except asyncio.CancelledError:
            run.cancel()
            raise

    @staticmethod
    def stream_answer(answer: bytes | None, reject: Reject | None, frame: bytes) -> bytes:
        """A ModelStreamInferResponse: the response, or the error of that request alone."""
        if reject is None:
            assert answer is not None
            return stream_ok(answer)
        try:
            request_id = route_fields(frame)[2]
        except InvalidTensor:
            request_id = ""
        return stream_error(f"{reject.code.name}: {reject.message}", request_id)


def _resolve(run: TaskRun, answer: bytes | None, reject: Reject | None) -> None:
    waiter = run.call
    if waiter.done():
        return
    if reject is None:
        waiter.set_result(answer)
    else:
        waiter.set_exception(reject)
