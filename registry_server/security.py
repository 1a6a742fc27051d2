"""Who may call the registry (the trust model in docs/DESIGN.md).

- Tokens by role: ``read`` (GET routes and the query POSTs) and ``admin`` (every write).
  ``AIOS_FAST_TOKEN`` is one token with every role; ``--auth-file`` holds ``role token``
  lines (``*`` for every role, ``#`` comments; roles of the block services are accepted
  and ignored, so one file serves a whole deployment), re-read on SIGHUP. Callers send
  ``Authorization: Bearer <token>``: 401 without a valid one, 403 without the role.
  Tokens are compared in constant time. ``GET /health`` is always open.
- Bodies must say ``Content-Type: application/json`` (415 otherwise): a web page cannot
  send that cross-origin without a CORS preflight, which the registry never grants.
- The Host header must name the server (its bound address, ``localhost`` and
  ``--allowed-host`` names; 403 otherwise): a DNS-rebinding page cannot reach it.
- ``--read-only``: every write is 405.

The registry is its own process and does not import aios_fast: the token file format is
the same as the block services' (``aios_fast.auth``), parsed here again.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web

__all__ = ["ENV_TOKEN", "Security", "is_loopback"]

ENV_TOKEN = "AIOS_FAST_TOKEN"
ROLES = ("read", "admin")
KNOWN_ROLES = ("read", "admin", "infer", "*")  # a block's token file is fine here too
READS = ("GET", "HEAD")
BODIES = ("POST", "PUT", "PATCH")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parse(text: str, source: str) -> dict[str, set[str]]:
    tokens: dict[str, set[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in KNOWN_ROLES:
            raise ValueError(f"{source}:{number}: expected 'role token' with a role of "
                             f"{', '.join(KNOWN_ROLES)}")  # fmt: skip
        role, token = parts
        if len(token) < 16:
            raise ValueError(f"{source}:{number}: a token must be at least 16 characters")
        tokens.setdefault(token, set()).update(ROLES if role == "*" else (role,))
    return tokens


class Security:
    """The registry's checks, as one aiohttp middleware (``middleware``)."""

    def __init__(
        self,
        tokens: dict[str, Iterable[str]] | None = None,
        path: str | None = None,
        *,
        allowed_hosts: Iterable[str] = (),
        read_only: bool = False,
    ) -> None:
        self.path = path
        self._base = {token: set(roles) for token, roles in (tokens or {}).items()}
        self._tokens: list[tuple[bytes, frozenset[str]]] = []
        self.allowed_hosts = {h.lower().strip("[]") for h in allowed_hosts}
        self.read_only = read_only
        self.reload()

    @classmethod
    def from_env(cls, path: str | None = None, **kw) -> Security:
        token = os.environ.get(ENV_TOKEN, "").strip()
        if token and len(token) < 16:
            raise ValueError(f"{ENV_TOKEN} must be at least 16 characters")
        return cls({token: ROLES} if token else {}, path, **kw)

    def reload(self) -> None:
        """(Re-)read the token file; a broken one raises and changes nothing."""
        merged = {token: set(roles) for token, roles in self._base.items()}
        if self.path:
            try:
                text = Path(self.path).read_text()
            except OSError as exc:
                raise ValueError(f"cannot read the token file: {exc}") from None
            for token, roles in _parse(text, self.path).items():
                merged.setdefault(token, set()).update(roles)
        self._tokens = [(t.encode(), frozenset(r)) for t, r in merged.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def bind(self, host: str) -> None:
        """The server listens on ``host``: its name is a valid Host header."""
        self.allowed_hosts |= {host.lower().strip("[]"), "localhost", "127.0.0.1", "::1"}

    def _roles(self, header: str | None) -> frozenset[str] | None:
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 9110 11.1)
            return None
        given = credentials.strip().encode("utf-8", "surrogateescape")
        found = None
        for token, roles in self._tokens:
            if hmac.compare_digest(token, given):
                found = roles
        return found

    def _refusal(self, request: web.Request) -> tuple[int, str] | None:
        if self.allowed_hosts:
            try:
                host = (request.url.host or "").lower().strip("[]")
            except ValueError:  # a Host header that is no host at all
                host = ""
            if host not in self.allowed_hosts:
                return 403, f"Host {request.host!r} is not this registry's name"
        if request.path == "/health":
            return None
        if request.method in BODIES and request.content_type != "application/json":
            return 415, "the body must be Content-Type: application/json"
        handler = getattr(request.match_info, "handler", None)
        reading = request.method in READS or getattr(handler, "__name__", "") == "query"
        if not reading and self.read_only:
            return 405, "this registry is read-only"
        if not self._tokens:
            return None
        roles = self._roles(request.headers.get("Authorization"))
        if roles is None:
            return 401, "a valid bearer token is required (Authorization: Bearer ...)"
        role = "read" if reading else "admin"
        if role not in roles:
            return 403, f"this token does not have the {role!r} role"
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        refusal = self._refusal(request)
        if refusal is not None:
            status, message = refusal  # the registry's error shape (app.fail)
            return web.json_response({"success": False, "message": message}, status=status)
        return await handler(request)
