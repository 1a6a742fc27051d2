"""The ``POST /mgmt`` shape every block service shares (executor, health checker,
auto-scaler, instance), and small aiohttp helpers for the sidecars' HTTP servers.

Request: ``{"mgmt_action": str, "mgmt_data": object}`` (mgmt_data may be omitted).
Reply: ``{"success": true, "data": ...}`` with 200, or ``{"success": false, "message":
...}`` with 400 (malformed request, unknown action, bad mgmt_data), 404 (unknown
instance), 409 (conflict) or 500 (a user policy's or block's code failed). User code
(a policy's or block's ``management``) refuses a request by raising ValueError: 400.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from ..auth import Auth, AuthError, is_loopback

__all__ = [
    "MgmtError",
    "MgmtRequest",
    "convert",
    "fail",
    "mgmt_route",
    "new_app",
    "ok",
    "run_action",
    "start_site",
]

log = logging.getLogger("aios_fast.mgmt")
T = TypeVar("T")
_encoder = msgspec.json.Encoder()


class MgmtRequest(msgspec.Struct, forbid_unknown_fields=True):
    mgmt_action: str
    mgmt_data: dict[str, Any] = {}


class MgmtError(Exception):
    """An action's refusal: ``status`` is the HTTP status, the text the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def convert(data: dict, kind: type[T], action: str) -> T:
    """mgmt_data as the msgspec Struct an action takes (400 naming what is wrong)."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise MgmtError(f"{action}: bad mgmt_data: {exc}") from None


def _json(body: dict, status: int) -> web.Response:
    try:
        payload = _encoder.encode(body)
    except (TypeError, msgspec.EncodeError) as exc:  # a policy returned something odd
        payload = _encoder.encode(
            {"success": False, "message": f"result is not JSON-serializable: {exc}"}
        )
        status = 500
    return web.Response(body=payload, status=status, content_type="application/json")


def ok(data: Any = None) -> web.Response:
    return _json({"success": True, "data": data}, 200)


def fail(message: str, status: int = 400) -> web.Response:
    return _json({"success": False, "message": message}, status)


Dispatch = Callable[[str, dict], Awaitable[Any] | Any]


async def run_action(actions: dict[str, Callable[[dict], Any]], action: str, data: dict,
                     policy=None, no_policy: str = "") -> Any:  # fmt: skip
    """A built-in action (sync or async), else the policy's (a ``PolicyRule``)
    ``management(action, data)``; a 400 naming the built-ins when neither has it.
    ``no_policy`` says why there is no policy to ask, when ``policy`` is None."""
    handler = actions.get(action)
    if handler is not None:
        result = handler(data)
    elif policy is not None and getattr(policy.rule, "management", None) is not None:
        result = policy.management(action, data)
    else:
        why = no_policy if policy is None else f"the policy {policy.rule_id!r} has no management()"
        raise MgmtError(f"unknown management action {action!r}: the built-in actions are "
                        f"{', '.join(actions)}; {why}")  # fmt: skip
    return await result if inspect.isawaitable(result) else result


def mgmt_route(dispatch: Dispatch, what: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler for ``POST /mgmt`` calling ``dispatch(action, data)``.

    ``dispatch`` raises MgmtError (or ValueError) to refuse; any other exception is the
    failure of code run on the caller's behalf (a policy's management()): 500, logged."""

    async def handler(request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read(), type=MgmtRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return fail(
                f'bad request: {exc}; expected {{"mgmt_action": "<action>", "mgmt_data": {{...}}}}'
            )
        try:
            result = dispatch(body.mgmt_action, body.mgmt_data)
            if inspect.isawaitable(result):
                result = await result
        except MgmtError as exc:
            return fail(str(exc), exc.status)
        except ValueError as exc:  # user code's way to refuse the request
            return fail(f"{body.mgmt_action}: {exc}", 400)
        except Exception as exc:
            log.exception("%s: management action %r failed", what, body.mgmt_action)
            return fail(f"{body.mgmt_action} failed: {type(exc).__name__}: {exc}", 500)
        return ok(result)

    return handler


async def start_site(app: web.Application, host: str, port: int,
                     ssl_context=None) -> tuple[web.AppRunner, int]:  # fmt: skip
    """Serve ``app`` on host:port (0: a free port), over TLS with ``ssl_context``;
    returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    server: Any = site._server  # the started site's (asyncio's or uvloop's Server)
    return runner, server.sockets[0].getsockname()[1]


def _role(request: web.Request, open_metrics: bool) -> str | None:
    path = request.path
    if path == "/health":
        return None  # probes: says up or down, nothing more
    if path == "/metrics":
        return None if open_metrics else "read"
    if path == "/stats" and request.method == "GET":
        return "read"
    return "admin"


def new_app(auth: Auth | None, host: str) -> web.Application:
    """An aiohttp app for a block service listening on ``host``, refusing calls without
    the token their route needs (401/403 JSON): ``GET /health`` is open, ``GET
    /metrics`` is open on loopback only (``read`` elsewhere), ``GET /stats`` needs
    ``read``, anything else (``POST /mgmt``) ``admin``."""
    if auth is None or not auth.enabled:
        return web.Application()
    open_metrics = is_loopback(host)

    @web.middleware
    async def check_token(request: web.Request, handler):
        role = _role(request, open_metrics)
        if role is not None:
            try:
                auth.check(request.headers.get("Authorization"), role)
            except AuthError as exc:
                return fail(str(exc), exc.status)
        return await handler(request)

    return web.Application(middlewares=[check_token])
