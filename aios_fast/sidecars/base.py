"""What the block's sidecars (health checker, auto-scaler) share: a client for the
executor's management API, a policy run at an interval, and a ``POST /mgmt`` server.

A sidecar's policy is a built-in (``builtin:<name>``, from the sidecar's table) or a
user ``AIOSv1PolicyRule`` (``aios_fast.policy``). It runs in a thread (user code may
block, as the seeds' health policy does with ``requests``); a policy that raises or
answers garbage is logged and counted, and the sidecar goes on with its next round.

Management actions every sidecar has: ``status``, ``run_now`` (one round now; returns
its outcome), ``set_interval`` [interval], ``get_policy``, ``set_policy_parameters``
[parameters, replace=false]. Any other action goes to the policy's ``management()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from ..auth import Auth, bearer, check_bind
from ..errors import AiosFastError
from ..policy import PolicyRule
from ..service.http import MgmtError, convert, mgmt_route, new_app, run_action, start_site
from ..service.periodic import Periodic
from ..tls import TLS

__all__ = ["ExecutorCallError", "ExecutorClient", "Sidecar"]


class ExecutorCallError(AiosFastError):
    def __init__(self, action: str, status: int, message: str) -> None:
        super().__init__(f"executor {action}: {status} {message}")
        self.status = status


class ExecutorClient:
    """Calls the executor's ``POST /mgmt`` (``url`` like http://127.0.0.1:18001)."""

    def __init__(self, url: str, timeout: float = 60.0, token: str | None = None,
                 tls: TLS | None = None) -> None:  # fmt: skip
        self.url = url.rstrip("/") + "/mgmt"
        self._ssl = (tls or TLS()).client_context() or True
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"Authorization": bearer(token)} if token else None
        self._session: aiohttp.ClientSession | None = None

    async def call(self, action: str, data: dict | None = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=self._ssl),
            )  # fmt: skip
        body = {"mgmt_action": action, "mgmt_data": data or {}}
        try:
            async with self._session.post(self.url, json=body) as resp:
                reply = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ExecutorCallError(action, 0, f"unreachable at {self.url}: {exc}") from None
        if status != 200 or not reply.get("success"):
            raise ExecutorCallError(action, status, str(reply.get("message")))
        return reply["data"]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Interval(msgspec.Struct):
    interval: float


class _Parameters(msgspec.Struct):
    parameters: dict[str, Any]
    replace: bool = False


class Sidecar:
    """Base class: subclasses set ``name``, ``BUILTINS`` and implement ``round()``."""

    name = "sidecar"
    BUILTINS: dict[str, type] = {}
    DEFAULT_POLICY = "builtin:none"

    def __init__(
        self,
        executor_url: str,
        *,
        interval: float = 5.0,
        policy: dict | None = None,
        block_data: dict | None = None,
        cluster_data: dict | None = None,
        auth: Auth | None = None,
        insecure: bool = False,
        tls: TLS | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"{self.name}: interval must be > 0, not {interval}")
        self.log = logging.getLogger(f"aios_fast.{self.name}")
        self.auth = auth or Auth()
        self.insecure = insecure
        self.tls = tls or TLS()
        self.executor = ExecutorClient(executor_url, token=self.auth.any_token("admin"),
                                       tls=self.tls)  # fmt: skip
        self.block_data = block_data or {}
        self.cluster_data = cluster_data or {}
        self.latest_metrics: dict = {"block_metrics": {}, "cluster_metrics": {}}
        self.rule = self._load_policy(policy or {})
        self.rounds = self.round_errors = self.policy_errors = 0
        self.last_error: str | None = None
        self.last_round: dict | None = None
        self._lock = asyncio.Lock()
        # A failing round is logged by Periodic and tried again at the next tick.
        self._periodic = Periodic(self.run_round, interval, self.log, f"{self.name} round")
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.actions: dict[str, Callable[[dict], Any]] = {
            "status": self.status,
            "run_now": self.run_now,
            "set_interval": self.set_interval,
            "get_policy": self.get_policy,
            "set_policy_parameters": self.set_policy_parameters,
        }

    # ------------------------------------------------------------------ policy

    def _load_policy(self, spec: dict) -> PolicyRule:
        uri = (spec.get("policyRuleURI") or self.DEFAULT_POLICY).strip()
        policy: type | str = uri
        if uri.startswith("builtin:"):
            builtin = self.BUILTINS.get(uri[len("builtin:") :])
            if builtin is None:
                raise AiosFastError(
                    f"{self.name}: unknown built-in policy {uri!r}; known: "
                    f"{', '.join('builtin:' + n for n in self.BUILTINS)}"
                )
            policy = builtin
        return PolicyRule(
            policy,
            uri,
            parameters=spec.get("parameters") or {},
            settings=spec.get("settings") or {},
            get_metrics=lambda: self.latest_metrics,
            block_data=self.block_data,
            cluster_data=self.cluster_data,
        )

    async def evaluate(self, input_data: dict) -> Any:
        """The policy's answer, or None when it raised (logged and counted)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, self.rule.eval, input_data
            )
        except Exception as exc:
            self.policy_errors += 1
            self.last_error = f"policy {self.rule.rule_id}: {type(exc).__name__}: {exc}"
            self.log.error("%s", self.last_error)
            return None

    # ------------------------------------------------------------------ rounds

    async def round(self) -> dict:
        raise NotImplementedError

    async def run_round(self) -> dict:
        """One round (never two at once); its outcome is kept as ``last_round``."""
        async with self._lock:
            started = time.time()
            try:
                outcome = await self.round()
            except Exception as exc:
                self.round_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self.rounds += 1
            self.last_round = {"at": started, **outcome}
            return self.last_round

    # ------------------------------------------------------------------ management

    def status(self, data: dict) -> dict:
        return {
            "interval": self._periodic.interval,
            "rounds": self.rounds,
            "round_errors": self.round_errors,
            "policy_errors": self.policy_errors,
            "last_error": self.last_error,
            "last_round": self.last_round,
        }

    async def run_now(self, data: dict) -> dict:
        try:
            return await self.run_round()
        except Exception as exc:
            raise MgmtError(f"run_now: the round failed: {exc}", 502) from None

    def set_interval(self, data: dict) -> dict:
        req = convert(data, _Interval, "set_interval")
        if req.interval <= 0:
            raise MgmtError("set_interval: interval must be > 0")
        self._periodic.interval = req.interval
        return {"interval": req.interval}

    def get_policy(self, data: dict) -> dict:
        return {
            "policyRuleURI": self.rule.rule_id,
            "parameters": self.rule.parameters,
        }

    def set_policy_parameters(self, data: dict) -> dict:
        req = convert(data, _Parameters, "set_policy_parameters")
        if req.replace:
            self.rule.parameters.clear()
        self.rule.parameters.update(req.parameters)
        return self.get_policy({})

    async def dispatch(self, action: str, data: dict) -> Any:
        return await run_action(self.actions, action, data, self.rule)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int | None = 0) -> None:
        """Start the rounds and (unless port is None) the management server."""
        if port is not None:
            check_bind(host, self.auth, self.insecure, self.name)
            app = new_app(self.auth, host)
            app.router.add_post("/mgmt", mgmt_route(self.dispatch, self.name))
            app.router.add_get("/health", self._health)
            self._runner, self.port = await start_site(app, host, port,
                                                       self.tls.server_context())  # fmt: skip
        self._periodic.start()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"healthy": True, "rounds": self.rounds})

    async def stop(self) -> None:
        await self._periodic.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.executor.close()
