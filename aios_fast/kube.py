"""What the Kubernetes actuator (``sidecars.kube_actuator``) and the EndpointSlice
discovery (``executor.kube_discovery``) share: the client, from a kubeconfig or the
in-cluster service account, and API calls retried with backoff.

The client is lightkube's ``AsyncClient`` (the ``kube`` extra: ``pip install
'aios-fast[kube]'``). Errors are sorted into those worth retrying (409 conflict, 429,
5xx, the connection) and those that are not (401, 403: the ServiceAccount's RBAC; 404;
422: a bad request), which fail at once with a one-line message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import AiosFastError

__all__ = [
    "INSTANCE_PORTS",
    "RETRY_STATUSES",
    "KubeCallError",
    "Retrier",
    "describe_error",
    "error_status",
    "new_client",
]

log = logging.getLogger("aios_fast.kube")
T = TypeVar("T")

# The instances' container ports (the instances' Service names them so the EndpointSlices
# carry them): gRPC (the executor's links), management HTTP (GET /health, /stats) and the
# native link's TCP port (the executors ask the gRPC port for it: aios_fast.wire).
INSTANCE_PORTS = {"grpc": 50061, "mgmt": 18061, "link": 50062}
RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


class KubeCallError(AiosFastError):
    """A Kubernetes API call that failed for good (``status``: HTTP status, 0: no answer)."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"kubernetes: {what}: {message}")
        self.status = status


def _lightkube():
    try:
        import lightkube
    except ImportError:
        raise AiosFastError(
            "the Kubernetes support needs lightkube: pip install 'aios-fast[kube]'"
        ) from None
    return lightkube


def new_client(kubeconfig: str | None = None, namespace: str | None = None, timeout: float = 10.0):
    """A lightkube ``AsyncClient``: from ``kubeconfig`` (a file) when given, else the
    in-cluster service account (in a pod), else $KUBECONFIG or ~/.kube/config."""
    lightkube = _lightkube()
    from lightkube import KubeConfig
    from lightkube.core.exceptions import ConfigError

    try:
        if kubeconfig:
            config = KubeConfig.from_file(os.path.expanduser(kubeconfig))
        else:
            config = KubeConfig.from_env()
    except (ConfigError, OSError) as exc:
        raise AiosFastError(f"kubernetes: no usable configuration: {exc}") from None
    import httpx2

    timeouts = httpx2.Timeout(timeout)
    return lightkube.AsyncClient(config=config, namespace=namespace, timeout=timeouts)


def error_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed API call, 0 for a transport failure (no answer), None
    when ``exc`` is not an API or transport error (a bug: not retried)."""
    from lightkube import ApiError

    if isinstance(exc, ApiError):
        return int(exc.status.code or 0) or 500
    import httpx2

    if isinstance(exc, httpx2.HTTPStatusError):  # a watch refused before its stream began
        return exc.response.status_code
    if isinstance(exc, (httpx2.TransportError, OSError, asyncio.TimeoutError)):
        return 0
    return None


def describe_error(exc: BaseException) -> str:
    from lightkube import ApiError

    if isinstance(exc, ApiError):
        status = exc.status
        return f"{status.code} {status.reason or ''}: {status.message or ''}".strip()
    import httpx2

    if isinstance(exc, httpx2.HTTPStatusError):
        return f"{exc.response.status_code} {exc.response.reason_phrase}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Retrier:
    """Runs API calls, retrying those worth it with exponential backoff (``base`` x 2^k
    seconds, at most ``cap``, jittered) up to ``attempts`` tries; counts and keeps the
    last error for ``status``."""

    def __init__(self, attempts: int = 5, base: float = 0.2, cap: float = 5.0) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, not {attempts}")
        self.attempts, self.base, self.cap = attempts, base, cap
        self.calls = self.retries = self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def _note(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.time()

    async def call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """``await op()``; ``what`` names it in logs and errors. Raises KubeCallError."""
        self.calls += 1
        for attempt in range(1, self.attempts + 1):
            try:
                return await op()
            except Exception as exc:
                status = error_status(exc)
                if status is None:
                    raise
                text = describe_error(exc)
                self._note(f"{what}: {text}")
                if status not in RETRY_STATUSES and status != 0:
                    self.failures += 1
                    hint = " (check the ServiceAccount's RBAC)" if status in (401, 403) else ""
                    raise KubeCallError(what, status, text + hint) from None
                if attempt == self.attempts:
                    self.failures += 1
                    raise KubeCallError(
                        what, status, f"{text} (gave up after {attempt} tries)"
                    ) from None
                self.retries += 1
                delay = min(self.cap, self.base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.warning("%s: %s; retrying in %.2fs", what, text, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def status(self) -> dict:
        return {
            "api_calls": self.calls,
            "api_retries": self.retries,
            "api_failures": self.failures,
            "last_api_error": self.last_error,
            "last_api_error_at": self.last_error_at,
        }
