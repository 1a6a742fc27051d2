"""Bearer tokens and roles for every service of a block (the trust model in
docs/DESIGN.md: anyone who can reach a port is untrusted unless they hold a token for
the role the call needs).

Roles: ``infer`` (data plane: InferenceProxy calls, instance links), ``admin``
(management, scaling, policy changes) and ``read`` (metrics and readings). A token file
(``--auth-file``) has one ``role token`` per line (``#`` comments; a token may be listed
under several roles; ``*`` as the role gives every role); the environment variable
``AIOS_FAST_TOKEN`` is one token with every role, the simple case. The file is re-read
on SIGHUP (``Auth.reload``). Tokens are compared in constant time.

``open_roles`` are roles every caller has without a token: ``aios-fast block up``, when
no token is configured, generates an internal token for the block's own calls and
leaves ``infer`` open on the executor (loopback only), so the seeds' client keeps
working while management, instances and sidecars refuse callers without the token.

gRPC callers send ``authorization: Bearer <token>`` metadata (UNAUTHENTICATED without a
valid token, PERMISSION_DENIED with a token lacking the role); HTTP callers the same
header (401 / 403, JSON body).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import stat
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from .errors import AiosFastError

__all__ = [
    "ENV_TOKEN",
    "ROLES",
    "RUNTIME_ENV",
    "Auth",
    "AuthError",
    "TokenHandoff",
    "bearer",
    "check_bind",
    "is_loopback",
    "local_token",
    "new_token",
    "prune_stale",
    "runtime_dir",
]

log = logging.getLogger("aios_fast.auth")
ENV_TOKEN = "AIOS_FAST_TOKEN"
RUNTIME_ENV = "AIOS_FAST_RUNTIME_DIR"
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
                 path: str | None = None, open_roles: Iterable[str] = ()) -> None:  # fmt: skip
        self.path = path
        self.open_roles = frozenset(open_roles)
        unknown = self.open_roles - set(ROLES)
        if unknown:
            raise AiosFastError(f"unknown role(s) {', '.join(sorted(unknown))} "
                                f"(roles: {', '.join(ROLES)})")  # fmt: skip
        self._base = {token: set(roles) for token, roles in (tokens or {}).items()}
        self._tokens: list[tuple[bytes, frozenset[str]]] = []
        self.reload()

    @classmethod
    def from_env(cls, path: str | None = None, env: dict | None = None,
                 open_roles: Iterable[str] = ()) -> Auth:  # fmt: skip
        """``AIOS_FAST_TOKEN`` (every role) plus the token file at ``path``, if given."""
        token = (os.environ if env is None else env).get(ENV_TOKEN, "").strip()
        if token and len(token) < 16:
            raise AiosFastError(f"{ENV_TOKEN} must be at least 16 characters")
        return cls({token: ROLES} if token else {}, path, open_roles)

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

    def requires(self, role: str) -> bool:
        """Whether a call needing ``role`` must present a token."""
        return bool(self._tokens) and role not in self.open_roles

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
        """Raise AuthError unless the header's token has ``role`` (no-op when disabled
        or the role is open)."""
        if not self._tokens or role in self.open_roles:
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
    anything else needs a token, or ``--insecure`` to say the operator means it. Open
    roles (callable without a token) are loopback-only in the same way."""
    if is_loopback(host) or insecure:
        if not is_loopback(host) and not auth.enabled:
            log.warning("%s listens on %s with no authentication (--insecure)", what, host)
        elif not is_loopback(host) and auth.open_roles:
            log.warning("%s listens on %s with roles open to anyone: %s (--insecure)", what,
                        host, ", ".join(sorted(auth.open_roles)))  # fmt: skip
        return
    if auth.enabled and auth.open_roles:
        raise AiosFastError(
            f"{what}: refusing to listen on {host} with roles open to anyone without a token "
            f"({', '.join(sorted(auth.open_roles))}): open roles are for loopback, or pass "
            "--insecure"
        )
    if auth.enabled:
        return
    raise AiosFastError(
        f"{what}: refusing to listen on {host} without authentication: set {ENV_TOKEN} or "
        "--auth-file, or pass --insecure to accept anyone who can reach the port"
    )


# ---------------------------------------------------------------- local token hand-off
# ``block up`` with no token configured generates one for the block's own calls and
# hands it to the same user's clients (``aios-fast mgmt/send/bench``) through a file only
# that user can read, found by the address being called: Jupyter's runtime files, for
# a block.


def runtime_dir() -> Path:
    """Where running blocks leave their token files: $AIOS_FAST_RUNTIME_DIR, else
    $XDG_RUNTIME_DIR/aios-fast, else ~/.cache/aios-fast/run."""
    if os.environ.get(RUNTIME_ENV):
        return Path(os.environ[RUNTIME_ENV])
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "aios-fast"
    return Path.home() / ".cache" / "aios-fast" / "run"


def _address(target: str) -> str | None:
    """``host:port`` of a target (``host:port`` or a URL), localhost as 127.0.0.1."""
    parsed = urllib.parse.urlsplit(target if "//" in target else f"//{target}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        return None
    if not host or not port:
        return None
    return f"{'127.0.0.1' if host == 'localhost' else host}:{port}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TokenHandoff:
    """A running block's token for its endpoints, in a 0600 file of a 0700 directory."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.path: Path | None = None

    def write(self, endpoints: Iterable[str]) -> Path:
        """Hand the token out for ``endpoints`` (``host:port`` or URLs)."""
        endpoints = sorted({a for a in map(_address, endpoints) if a})
        folder = runtime_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
        if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise AiosFastError(f"{folder} must belong to you and be private (chmod 700) to "
                                "hold tokens")  # fmt: skip
        prune_stale(folder, "block-*.json")
        path = folder / f"block-{os.getpid()}.json"
        fresh = path.with_suffix(".tmp")  # written whole, then renamed: readers see one
        fresh.unlink(missing_ok=True)
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "token": self.token, "endpoints": endpoints}, f)
        os.replace(fresh, path)
        self.path = path
        return path

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def prune_stale(folder: Path, pattern: str) -> None:
    """Remove this user's files in ``folder`` named ``pattern`` whose block is gone (the
    pid in their name is not running: a ``kill -9`` left them)."""
    for path in folder.glob(pattern):
        pid = path.stem.rsplit("-", 1)[-1]
        try:
            if pid.isdigit() and path.stat().st_uid == os.getuid() and not _alive(int(pid)):
                path.unlink()
        except OSError:
            continue


def local_token(target: str) -> str | None:
    """The token a running ``block up`` of this user handed out for ``target``, if any.
    Files of blocks that are gone are skipped; unreadable or foreign ones ignored."""
    address = _address(target)
    folder = runtime_dir()
    if address is None or not folder.is_dir():
        return None
    for path in sorted(folder.glob("block-*.json")):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            info = json.loads(path.read_text())
            if address in info["endpoints"] and _alive(int(info["pid"])):
                return str(info["token"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None
