"""Bearer tokens and roles for every service of a block (the trust model in
docs/DESIGN.md: anyone who can reach a port is untrusted unless they hold a token for
the role the call needs).

Roles: ``infer`` (data plane: InferenceProxy calls, instance links), ``admin``
(management, scaling, policy changes) and ``read`` (metrics and readings). A token file
(``--auth-file``) has one ``role token`` per line (``#`` comments; a token may be listed
under several roles; ``*`` as the role gives every role); the environment variable
``AIOS_FAST_TOKEN`` is one token with every role, the simple case. The file is re-read
on SIGHUP (``Auth.reload``). Tokens are compared in constant time.

gRPC callers send ``authorization: Bearer <token>`` metadata (UNAUTHENTICATED without a
valid token, PERMISSION_DENIED with a token lacking the role); HTTP callers the same
header (401 / 403, JSON body).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from .errors import AiosFastError

__all__ = [
    "ENV_TOKEN",
    "ROLES",
    "Auth",
    "AuthError",
    "bearer",
    "check_bind",
    "is_loopback",
    "new_token",
]

log = logging.getLogger("aios_fast.auth")
ENV_TOKEN = "AIOS_FAST_TOKEN"
ROLES = ("infer", "admin", "read")


class AuthError(AiosFastError):
    """A refused call: ``status`` 401 (no valid token) or 403 (the token lacks the role)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def _parse(text: str, source: str) -> dict[str, set[str]]:
    roles: dict[str, set[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise AiosFastError(f"{source}:{number}: expected 'role token', got {len(parts)} "
                                "fields")  # fmt: skip
        role, token = parts
        if role != "*" and role not in ROLES:
            raise AiosFastError(f"{source}:{number}: unknown role {role!r} "
                                f"(roles: {', '.join(ROLES)}, or *)")  # fmt: skip
        if len(token) < 16:
            raise AiosFastError(f"{source}:{number}: a token must be at least 16 characters")
        roles.setdefault(token, set()).update(ROLES if role == "*" else (role,))
    return roles


class Auth:
    """The tokens a service accepts, by role. Empty: no authentication configured."""

    def __init__(self, tokens: dict[str, Iterable[str]] | None = None,
                 path: str | None = None) -> None:  # fmt: skip
        self.path = path
        self._base = {token: set(roles) for token, roles in (tokens or {}).items()}
        self._tokens: list[tuple[bytes, frozenset[str]]] = []
        self.reload()

    @classmethod
    def from_env(cls, path: str | None = None, env: dict | None = None) -> Auth:
        """``AIOS_FAST_TOKEN`` (every role) plus the token file at ``path``, if given."""
        token = (os.environ if env is None else env).get(ENV_TOKEN, "").strip()
        if token and len(token) < 16:
            raise AiosFastError(f"{ENV_TOKEN} must be at least 16 characters")
        return cls({token: ROLES} if token else {}, path)

    def reload(self) -> None:
        """(Re-)read the token file (on SIGHUP); a file that cannot be read or parsed
        raises and leaves the tokens in force unchanged."""
        merged = {token: set(roles) for token, roles in self._base.items()}
        if self.path:
            try:
                text = Path(self.path).read_text()
            except OSError as exc:
                raise AiosFastError(f"cannot read the token file: {exc}") from None
            for token, roles in _parse(text, self.path).items():
                merged.setdefault(token, set()).update(roles)
        self._tokens = [(t.encode(), frozenset(r)) for t, r in merged.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def any_token(self, role: str) -> str | None:
        """A token with ``role`` (what this process sends to its peers), if any."""
        for token, roles in self._tokens:
            if role in roles:
                return token.decode()
        return None

    def roles_of(self, header: str | None) -> frozenset[str] | None:
        """The roles of the token in an ``authorization`` header; None when it holds no
        valid token. Every configured token is compared, in constant time."""
        if not header or not header.startswith("Bearer "):
            return None
        given = header[7:].strip().encode()
        found = None
        for token, roles in self._tokens:
            if hmac.compare_digest(token, given):
                found = roles
        return found

    def check(self, header: str | None, role: str) -> None:
        """Raise AuthError unless the header's token has ``role`` (no-op when disabled)."""
        if not self._tokens:
            return
        roles = self.roles_of(header)
        if roles is None:
            raise AuthError("a valid bearer token is required (authorization: Bearer ...)",
                            401)  # fmt: skip
        if role not in roles:
            raise AuthError(f"this token does not have the {role!r} role", 403)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: Auth, insecure: bool, what: str) -> None:
    """Safe by default: without a token, a service listens on loopback only; binding
    anything else needs a token, or ``--insecure`` to say the operator means it."""
    if is_loopback(host) or auth.enabled or insecure:
        if not is_loopback(host) and not auth.enabled:
            log.warning("%s listens on %s with no authentication (--insecure)", what, host)
        return
    raise AiosFastError(
        f"{what}: refusing to listen on {host} without authentication: set {ENV_TOKEN} or "
        "--auth-file, or pass --insecure to accept anyone who can reach the port"
    )
