"""The controller's gateway on the native gRPC front (the executor's HTTP/2 and gRPC
framing in C, ``aios_fast._front``), where it is built: ``vDAGInferenceService/infer``
and ``/infer_stream`` cost a callback per request instead of a grpc.aio call (the
executor front's measured ~18x less CPU per call).

The compiled front knows its methods by path (``_front._PATHS``, path -> method); the
controller's process adds its two paths there once (``enable``): ``infer`` is served as
the front's unary-with-result method, ``infer_stream`` as its stream. Everything else
(the token check at the headers, flow control, budgets, keepalive, a client's reset
cancelling its task, a stream's window) is ``executor.native_server.NativeServer``'s,
unchanged. Per task one asyncio task runs ``VDagController.submit``; a caller's
deadline is the controller's (the task's wait), as on the grpcio gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import msgspec

from ...errors import AiosFastError
from ...protos import vdag_pb2

__all__ = ["enable", "gateway"]

_VDAG_PATHS = (b"/vDAGInferenceService/infer", b"/vDAGInferenceService/infer_stream")


def enable() -> Any:
    """The compiled front with the controller's paths added (AiosFastError where the
    front is not built or does not route by a path table)."""
    from ...executor.native_front import load_front

    front = load_front()
    paths = getattr(front, "_PATHS", None)
    if not isinstance(paths, dict):
        raise AiosFastError("the native front has no path table: serving with grpcio")
    paths[_VDAG_PATHS[0]] = front.INFER_RESULT
    paths[_VDAG_PATHS[1]] = front.INFER_STREAM
    return front


class _Reject:
    __slots__ = ("code", "message")

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code = code
        self.message = message


class _Run:
    """One call's task (what NativeServer keeps as ``call.task`` or in a stream's
    pending set): ``cancel`` stops it (the client reset the stream, or left)."""

    __slots__ = ("call", "frame", "on_done", "over", "task", "timer")

    def __init__(self, call: Any, frame: bytes, on_done: Callable) -> None:
        self.call = call
        self.frame = frame
        self.on_done = on_done
        self.over = False
        self.task: asyncio.Task | None = None
        self.timer = None

    def cancel(self) -> None:
        self.over = True
        if self.task is not None:
            self.task.cancel()


def gateway(controller: Any, server_class: type, outcome: type[Exception]) -> type:
    """A NativeServer subclass that runs vDAG tasks on ``controller`` (``outcome``: the
    exception its ``submit`` raises for a task that ends without an answer)."""

    class Gateway(server_class):
        def __init__(self, _run_task: Any, *args: Any, **kw: Any) -> None:
            super().__init__(run_task, *args, **kw)

        def _unary(self, call, frame: bytes, want_result: bool):
            if not want_result:  # /InferenceProxy/infer: not served on this port
                call.finish(grpc.StatusCode.UNIMPLEMENTED.value[0],
                            "this port serves vDAGInferenceService")  # fmt: skip
                return None
            timeout = call.timeout
            return run_task(frame, True, None if timeout < 0 else timeout, self._answered, call)

    def run_task(frame: bytes, want_result: bool, timeout: float | None,
                 on_done: Callable, call: Any) -> _Run:  # fmt: skip
        run = _Run(call, frame, on_done)
        stream = not hasattr(call, "method")  # a stream's state, not a unary Call
        try:
            packet = vdag_pb2.vDAGInferencePacket.FromString(frame)
        except Exception:
            controller.received += 1
            controller.invalid += 1
            run.over = True
            if stream:
                on_done(run, _error(None, "INVALID_ARGUMENT", "not a vDAGInferencePacket"), None)
            else:
                on_done(run, None, _Reject(grpc.StatusCode.INVALID_ARGUMENT,
                                           "not a vDAGInferencePacket"))  # fmt: skip
            return run
        run.task = asyncio.ensure_future(_one(controller, outcome, run, packet, timeout,
                                              stream))  # fmt: skip
        return run

    return Gateway


async def _one(controller: Any, outcome: type[Exception], run: _Run, packet: Any,
               timeout: float | None, stream: bool) -> None:  # fmt: skip
    try:
        out = await controller.submit(packet, timeout)
    except outcome as exc:
        code: grpc.StatusCode = exc.code  # type: ignore[attr-defined]
        run.over = True
        if stream:
            node = getattr(exc, "node", "")
            run.on_done(run, _error(packet, code.name, str(exc), node), None)
        else:
            run.on_done(run, None, _Reject(code, str(exc)))
        return
    except asyncio.CancelledError:
        run.over = True  # the caller left: counted cancelled by submit; nobody to answer
        return
    except Exception as exc:
        run.over = True
        message = f"internal error: {type(exc).__name__}: {exc}"
        if stream:
            run.on_done(run, _error(packet, "INTERNAL", message), None)
        else:
            run.on_done(run, None, _Reject(grpc.StatusCode.INTERNAL, message))
        return
    run.over = True
    run.on_done(run, controller._answer(out), None)


def _error(packet: Any, code: str, message: str, node: str = "") -> bytes:
    """A failed task's answer on infer_stream, as the grpcio gateway writes it."""
    error: dict[str, str] = {"code": code, "message": message}
    if packet is not None:
        error["node"] = node
    data = msgspec.json.encode({"aios_error": error}).decode()
    if packet is None:
        return vdag_pb2.vDAGInferencePacket(data=data).SerializeToString()
    return vdag_pb2.vDAGInferencePacket(session_id=packet.session_id, seq_no=packet.seq_no,
                                        data=data).SerializeToString()  # fmt: skip
