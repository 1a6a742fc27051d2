"""Token checks for gRPC servers (``aios_fast.auth`` holds the tokens): a server
interceptor that refuses a call before its handler runs, UNAUTHENTICATED without a
valid token, PERMISSION_DENIED when the token lacks the method's role."""

from __future__ import annotations

import grpc

from ..auth import Auth, AuthError

__all__ = ["TokenInterceptor"]

_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED}


def _refusal(code: grpc.StatusCode, message: str, streaming: bool):
    async def unary(request, context):
        await context.abort(code, message)

    async def stream(requests, context):
        await context.abort(code, message)
        yield b""  # never reached: makes this an async generator, as the method's kind

    if streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """``roles``: method path -> the role it needs; ``streaming``: paths of
    stream-stream methods (their refusal must be a handler of the same kind). Methods
    not listed need ``default_role``."""

    def __init__(self, auth: Auth, roles: dict[str, str], streaming: frozenset[str],
                 default_role: str = "admin") -> None:  # fmt: skip
        self.auth = auth
        self.roles = roles
        self.streaming = streaming
        self.default_role = default_role

    async def intercept_service(self, continuation, details):
        header = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value
                break
        method = details.method
        try:
            self.auth.check(header, self.roles.get(method, self.default_role))
        except AuthError as exc:
            return _refusal(_CODES[exc.status], str(exc), method in self.streaming)
        return await continuation(details)
