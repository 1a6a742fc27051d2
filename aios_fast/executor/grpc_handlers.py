"""The grpcio front's method lookup (``--front grpcio``), where its token check lives:
grpc.aio asks a generic handler for a call's handler as soon as the call's HEADERS are
in (method and metadata), before any of its request is read. With a token required, a
call without the infer role is given a handler that reads nothing and answers
UNAUTHENTICATED / PERMISSION_DENIED, so grpc never waits for or holds its body (a
unary handler would read the whole message first). No interceptor: grpc.aio's
interceptor path costs ~45 us a call; this lookup is the one grpc makes anyway."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from ..auth import Auth, AuthError
from ..service.grpc_auth import refusal, token_of

__all__ = ["InferenceHandlers"]


class InferenceHandlers(grpc.GenericRpcHandler):
    """``handlers``: method name (``infer``, ...) -> its handler, for ``service``."""

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
