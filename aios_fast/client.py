"""A Python client for a block's API (the seeds' ``InferenceProxy``): ``Client`` (sync)
and ``AsyncClient`` (asyncio), on grpcio generic calls over raw bytes and the project's
codec: no protobuf objects on the way.

    from aios_fast.client import Client

    with Client("127.0.0.1:50051") as client:
        out = client.infer_result(data='{"text": "hi"}', session_id="s", seq_no=1)
        print(out.data)

- **Tokens**: ``token=`` given, else ``AIOS_FAST_TOKEN``, else the token a running
  ``aios-fast block up`` of this user handed out for the target (``auth.local_token``);
  ``token=""`` sends none.
- **TLS**: ``tls=aios_fast.tls.TLS(cert, key, ca)`` (a CA: TLS, checked against it; a
  certificate and key as well: mutual TLS).
- **Message size**: ``max_message`` bounds both directions (the executor's
  ``--max-message``; 4 MiB by default). A task over it fails at once, RESOURCE_EXHAUSTED.
- **Deadlines**: ``timeout`` seconds per call (the client's default, or per call),
  retries included; past it, ``DeadlineExceeded``.
- **Retries**: UNAVAILABLE is retried (``retries`` times, exponential backoff with
  jitter, within the deadline) only when no instance can have run the task
  (``retry_safe``): no instance available or none accepted it, the executor draining,
  no connection made. A task lost after an instance accepted it is never retried.
- **Streaming**: ``stream(packets)`` sends many tasks on one ``infer_stream`` (no
  deadline unless its ``timeout`` is given: it bounds the whole stream) and
  yields the answers as they finish (not in order): an output ``Packet``, or, for a
  task that failed alone, its ``ClientError`` (``.session_id``, ``.seq_no`` name it).
- **Errors**: ``ClientError`` and its subclasses (``Unavailable``, ``DeadlineExceeded``,
  ``ResourceExhausted``, ``InvalidArgument``, ``Unauthenticated``,
  ``PermissionDenied``, ``Internal``, ``Cancelled``) carry ``code`` (the
  ``grpc.StatusCode``) and ``message``.

Outputs are the codec's ``Packet`` (attribute names as the protobuf class's; ``files``
and ``frame_ptr`` are views into the answer); ``fields(packet)`` gives plain values.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

import grpc

from . import codec
from .auth import ENV_TOKEN, bearer, local_token
from .errors import AiosFastError
from .tls import TLS
from .wire import ACCEPTED, INFER, INFER_RESULT, INFER_STREAM, MAX_MESSAGE, read_error

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "ClientError",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_of",
    "fields",
    "make_packet",
    "retry_safe",
]

Packet = codec.Packet
DEFAULT_TIMEOUT = 30.0

# ------------------------------------------------------------------------------ errors


class ClientError(AiosFastError):
    """A call that failed: ``code`` (grpc.StatusCode) and ``message`` as the server (or
    grpc) said them. On a stream, ``session_id`` and ``seq_no`` name the failed task."""

    def __init__(self, code: grpc.StatusCode, message: str, session_id: str = "",
                 seq_no: int = 0) -> None:  # fmt: skip
        self.code = code
        self.message = " ".join(message.split())  # one line
        self.session_id = session_id
        self.seq_no = seq_no
        super().__init__(f"{code.name}: {self.message}")


class Unavailable(ClientError):
    """UNAVAILABLE. ``retry_safe``: no instance can have run the task (it may be sent
    again); False when the task may have run (lost after acceptance, a broken call)."""

    @property
    def retry_safe(self) -> bool:
        return retry_safe(self.code, self.message)


class DeadlineExceeded(ClientError):
    """DEADLINE_EXCEEDED: the call's deadline (or the block's task timeout) passed."""


class ResourceExhausted(ClientError):
    """RESOURCE_EXHAUSTED: a message over a size limit, or the executor full."""


class InvalidArgument(ClientError):
    """INVALID_ARGUMENT: the task's packet could not be read."""


class Unauthenticated(ClientError):
    """UNAUTHENTICATED: no valid token."""


class PermissionDenied(ClientError):
    """PERMISSION_DENIED: the token lacks the infer role."""


class Internal(ClientError):
    """INTERNAL: the block failed on the task."""


class Cancelled(ClientError):
    """CANCELLED: the call was cancelled."""


_CLASSES: dict[grpc.StatusCode, type[ClientError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.CANCELLED: Cancelled,
}
_BY_NAME = {code.name: code for code in grpc.StatusCode}


def _error(code: grpc.StatusCode, message: str, session_id: str = "",
           seq_no: int = 0) -> ClientError:  # fmt: skip
    return _CLASSES.get(code, ClientError)(code, message or "", session_id, seq_no)


def _from_rpc(exc: grpc.RpcError) -> ClientError:
    return _error(exc.code(), exc.details() or "")


# What the executor (executor.task_run, both fronts) answers with UNAVAILABLE before any
# instance took the task, and grpc's own words when no connection could be made: the
# task cannot have run. Everything else with UNAVAILABLE may have run: "accepted by
# <instance>, then <reason>" (lost after acceptance), a connection broken mid-call.
_SAFE_UNAVAILABLE = (
    "no instance available",
    "no instance accepted the task",
    "the executor is stopping",
    "failed to connect to all addresses",
    "dns resolution failed",
)


def retry_safe(code: grpc.StatusCode, message: str) -> bool:
    """Whether a failed call may be sent again: UNAVAILABLE before any instance took it."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return False
    text = message.strip().lower()
    return text.startswith(_SAFE_UNAVAILABLE)


def error_of(packet) -> ClientError | None:
    """The error an ``infer_stream`` answer carries (``wire.error_packet``), else None."""
    found = read_error(packet)
    if found is None:
        return None
    code = _BY_NAME.get(found[0], grpc.StatusCode.UNKNOWN)
    return _error(code, found[1], packet.session_id, packet.seq_no)


# ------------------------------------------------------------------------------ packets


def make_packet(packet=None, *, data: str = "", session_id: str = "", seq_no: int = 0,
                ts: float | None = None, frame_ptr: bytes | str = b"", output_ptr: str = "",
                files: Iterable[Any] = ()) -> Any:  # fmt: skip
    """A ``codec.Packet`` from fields (``files``: ``codec.FileInfo`` or
    ``(metadata, bytes)`` pairs; ``ts``: now when not given), or ``packet`` as it is."""
    if packet is not None:
        return packet
    if isinstance(frame_ptr, str):
        frame_ptr = frame_ptr.encode()
    infos = [f if isinstance(f, codec.FileInfo) else codec.FileInfo(*f) for f in files]
    return codec.Packet(session_id=session_id, seq_no=seq_no, frame_ptr=frame_ptr, data=data,
                        ts=time.time() if ts is None else ts, output_ptr=output_ptr,
                        files=infos)  # fmt: skip


def fields(packet) -> dict[str, Any]:
    """A packet's fields as plain values (``frame_ptr`` and file data as bytes)."""
    return {
        "session_id": packet.session_id,
        "seq_no": packet.seq_no,
        "data": packet.data,
        "ts": packet.ts,
        "frame_ptr": bytes(packet.frame_ptr),
        "output_ptr": packet.output_ptr,
        "files": [(f.metadata, bytes(f.file_data)) for f in packet.files],
    }


def _frame(packet) -> bytes:
    if isinstance(packet, bytes | bytearray | memoryview):  # an encoded InferenceMessage
        return bytes(packet)
    if isinstance(packet, dict):  # the packet's fields
        packet = make_packet(**packet)
    return codec.encode_message(packet)


def _decode(reply: bytes):
    return codec.decode_message(reply)


# ------------------------------------------------------------------------------ clients


class _Base:
    def __init__(self, target: str, *, token: str | None = None, tls: TLS | None = None,
                 max_message: int = MAX_MESSAGE, timeout: float | None = DEFAULT_TIMEOUT,
                 retries: int = 3, backoff: float = 0.05, max_backoff: float = 1.0,
                 options: Iterable[tuple[str, Any]] = ()) -> None:  # fmt: skip
        if max_message < 1:
            raise ValueError(f"max_message must be >= 1, not {max_message}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, not {retries}")
        self.target = target
        self.tls = tls or TLS()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_message = max_message
        self.retried = 0  # calls sent again (retry_safe failures), since this client began
        if token is None:
            token = os.environ.get(ENV_TOKEN) or local_token(target) or ""
        self.metadata: tuple[tuple[str, str], ...] = (
            (("authorization", bearer(token)),) if token else ()
        )
        self.options = [("grpc.max_send_message_length", max_message),
                        ("grpc.max_receive_message_length", max_message),
                        *options]  # fmt: skip

    def _deadline(self, timeout: float | None) -> float | None:
        timeout = self.timeout if timeout is None else timeout
        return None if timeout is None else time.monotonic() + timeout

    def _retry_pause(self, error: ClientError, attempt: int, deadline: float | None) -> float:
        """Seconds to wait before retry ``attempt`` (1-based) of a call that failed with
        ``error`` (both clients' one retry rule); raises ``error`` when it is not retried:
        retries used up, a task an instance may have run, or no time left for the pause."""
        if attempt > self.retries or not retry_safe(error.code, error.message):
            raise error
        pause = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        pause *= 0.5 + random.random() / 2
        if deadline is not None and time.monotonic() + pause >= deadline:
            raise error
        self.retried += 1
        return pause

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class Client(_Base):
    """A blocking client of one executor (thread-safe: grpc channels are). See the
    module for the options; use it as a context manager, or ``close()`` it."""

    def __init__(self, target: str, **kw) -> None:
        super().__init__(target, **kw)
        self.channel = self.tls.channel(target, options=self.options)
        self._calls = {m: self.channel.unary_unary(m) for m in (INFER, INFER_RESULT)}
        self._stream = self.channel.stream_stream(INFER_STREAM)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, frame: bytes, timeout: float | None = None) -> bytes:
        """One unary call (``wire.INFER`` or ``wire.INFER_RESULT``) on raw bytes: the
        reply's bytes; retried as the module says; ``ClientError`` on failure."""
        rpc = self._calls[method]
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return rpc(frame, timeout=self._left(deadline), metadata=self.metadata)
            except grpc.RpcError as exc:
                error = _from_rpc(exc)
            attempt += 1
            time.sleep(self._retry_pause(error, attempt, deadline))

    def infer_result(self, packet=None, *, timeout: float | None = None, **packet_fields) -> Any:
        """Run a task, return its output ``Packet``. ``packet``: a ``codec.Packet`` or an
        encoded InferenceMessage; or the packet's fields as keywords (``make_packet``)."""
        frame = _frame(make_packet(packet, **packet_fields))
        return _decode(self.call(INFER_RESULT, frame, timeout))

    def infer(self, packet=None, *, timeout: float | None = None, **packet_fields) -> bool:
        """Hand a task over (the seeds' fire-and-forget): True once an instance took it."""
        frame = _frame(make_packet(packet, **packet_fields))
        return self.call(INFER, frame, timeout) == ACCEPTED

    def stream(self, packets: Iterable[Any], timeout: float | None = None) -> Iterator[Any]:
        """Send ``packets`` (Packets, frames or dicts of fields) on one ``infer_stream``; yield each
        answer as it finishes: its output ``Packet``, or the task's ``ClientError``. A
        failure of the stream itself raises. Streams are not retried. ``timeout``: seconds
        for the whole stream (None, the default: no deadline, not the client's)."""
        replies = self._stream((_frame(p) for p in packets), timeout=timeout,
                               metadata=self.metadata)  # fmt: skip
        try:
            for reply in replies:
                out = _decode(reply)
                yield error_of(out) or out
        except grpc.RpcError as exc:
            raise _from_rpc(exc) from None
        finally:
            replies.cancel()


class AsyncClient(_Base):
    """The asyncio client (grpc.aio): as ``Client``, every call awaited. Make it inside
    the event loop it is used in; ``async with`` it, or ``await close()``."""

    def __init__(self, target: str, **kw) -> None:
        super().__init__(target, **kw)
        self.channel = self.tls.aio_channel(target, options=self.options)
        self._calls = {m: self.channel.unary_unary(m) for m in (INFER, INFER_RESULT)}
        self._stream = self.channel.stream_stream(INFER_STREAM)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def call(self, method: str, frame: bytes, timeout: float | None = None) -> bytes:
        """As ``Client.call``."""
        rpc = self._calls[method]
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return await rpc(frame, timeout=self._left(deadline), metadata=self.metadata)
            except grpc.aio.AioRpcError as exc:
                error = _from_rpc(exc)
            attempt += 1
            await asyncio.sleep(self._retry_pause(error, attempt, deadline))

    async def infer_result(self, packet=None, *, timeout: float | None = None,
                           **packet_fields) -> Any:  # fmt: skip
        """As ``Client.infer_result``."""
        frame = _frame(make_packet(packet, **packet_fields))
        return _decode(await self.call(INFER_RESULT, frame, timeout))

    async def infer(self, packet=None, *, timeout: float | None = None, **packet_fields) -> bool:
        """As ``Client.infer``."""
        frame = _frame(make_packet(packet, **packet_fields))
        return await self.call(INFER, frame, timeout) == ACCEPTED

    async def stream(self, packets: Iterable[Any] | AsyncIterable[Any],
                     timeout: float | None = None) -> AsyncIterator[Any]:  # fmt: skip
        """As ``Client.stream``; ``packets`` may be an async iterable."""
        if isinstance(packets, AsyncIterable):
            source = packets

            async def frames() -> AsyncIterator[bytes]:
                async for p in source:
                    yield _frame(p)

            requests: Any = frames()
        else:
            requests = (_frame(p) for p in packets)
        call = self._stream(requests, timeout=timeout, metadata=self.metadata)
        try:
            async for reply in call:
                out = _decode(reply)
                yield error_of(out) or out
        except grpc.aio.AioRpcError as exc:
            raise _from_rpc(exc) from None
        finally:
            call.cancel()
