"""Token checks for gRPC servers (``aios_fast.auth`` holds the tokens): a server
interceptor that refuses a call before its handler runs, UNAUTHENTICATED without a
valid token, PERMISSION_DENIED when the token lacks the method's role."""

from __future__ import annotations

import grpc

from ..auth import Auth, AuthError

__all__ = ["TokenInterceptor", "refusal", "token_of"]

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


def token_of(metadata) -> str | None:
    """The ``authorization`` value among a call's metadata."""
    for key, value in metadata or ():
        if key == "authorization":
            return value
    return None


def refusal(exc: AuthError) -> tuple[grpc.StatusCode, str]:
    """The status a refused call gets."""
    return _CODES[exc.status], str(exc)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """For servers whose calls are few and long (an instance's links): grpc.aio's
    interceptor path costs about 45 us a call (12% of the executor's CPU per task,
    measured), so the executor checks tokens in its handlers instead (``token_of``)."""

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
        header = token_of(details.invocation_metadata)
        method = details.method
        try:
            self.auth.check(header, self.roles.get(method, self.default_role))
        except AuthError as exc:
            return _refusal(_CODES[exc.status], str(exc), method in self.streaming)
        return await continuation(details)
