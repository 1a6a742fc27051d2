"""One management and metrics front for an executor running as several worker processes.

Each worker serves its own ``/mgmt`` and ``/metrics`` on a private 127.0.0.1 port; the
parent process serves the block's public ports and fans out:

- ``/metrics``: every worker's exposition added up sample by sample (so the figures are
  the block's, whatever the worker count);
- ``/mgmt``: actions that change state go to every worker (they all balance over the
  same instances); the reply is the first worker's, or the first refusal. Reads are
  combined: counts add up, flags hold when they hold in every worker. A user policy's
  own actions also go to every worker; the reply carries each worker's answer under
  ``"workers"``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from ..auth import Auth, bearer
from ..service.http import MgmtRequest, fail, new_app, start_site
from ..service.metrics import CONTENT_TYPE, merge_expositions
from ..tls import TLS
from .services import BUILTIN_ACTIONS

__all__ = ["WorkerFront"]

_MAX_GAUGES = frozenset({"aios_executor_instance_up", "aios_executor_instance_available",
                         "aios_executor_instance_ejected"})  # fmt: skip
_COUNTS = ("inflight", "tasks_sent", "completed", "failed", "lost", "ejections")
_FLAGS = ("up", "healthy", "available")  # hold when they hold in every worker
_ANY = ("ejected",)  # hold when they hold in any worker


def _merge_rows(rows: list[dict]) -> dict:
    merged = dict(rows[0])
    for key in _COUNTS:
        merged[key] = sum(row.get(key, 0) for row in rows)
    for key in _FLAGS:
        merged[key] = all(row.get(key) for row in rows)
    for key in _ANY:
        merged[key] = any(row.get(key) for row in rows)
    return merged


def _merge_list(answers: list[list[dict]]) -> list[dict]:
    by_id: dict[str, list[dict]] = {}
    for rows in answers:
        for row in rows:
            by_id.setdefault(row["id"], []).append(row)
    return [_merge_rows(rows) for rows in by_id.values()]


def _merge_stats(answers: list[dict]) -> dict:
    tasks: dict[str, int] = {}
    for answer in answers:
        for key, value in answer["tasks"].items():
            tasks[key] = tasks.get(key, 0) + value
    latency = {}
    for stage in answers[0]["latency"]:
        parts = [a["latency"][stage] for a in answers]
        count = sum(p["count"] for p in parts)
        total = sum(p["mean_s"] * p["count"] for p in parts if p["count"])
        latency[stage] = {"count": count, "mean_s": total / count if count else None}
    instances = _merge_list([list(a["instances"].values()) for a in answers])
    return {
        "tasks": tasks,
        "inflight": sum(a["inflight"] for a in answers),
        "latency": latency,
        "policy_fallbacks": sum(a["policy_fallbacks"] for a in answers),
        "instances": {row["id"]: row for row in instances},
        "workers": len(answers),
    }


class WorkerFront:
    """The parent's servers in front of the workers' private HTTP ports."""

    def __init__(self, worker_ports: list[int], auth: Auth | None = None,
                 tls: TLS | None = None) -> None:  # fmt: skip
        self.tls = tls or TLS()  # the public ports'; workers are plain HTTP on loopback
        self.urls = [f"http://127.0.0.1:{port}" for port in worker_ports]
        self.auth = auth or Auth()
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.mgmt_port: int | None = None
        self.metrics_port: int | None = None

    async def _get_all(self, path: str) -> list[str]:
        async def one(url: str) -> str:
            assert self._session is not None  # started
            async with self._session.get(url + path) as resp:
                return await resp.text()

        return await asyncio.gather(*(one(url) for url in self.urls))

    async def _post_all(self, body: bytes) -> list[tuple[int, dict]]:
        async def one(url: str) -> tuple[int, dict]:
            assert self._session is not None  # started
            try:
                async with self._session.post(
                    url + "/mgmt", data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    return resp.status, await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                return 502, {"success": False, "message": f"worker {url} unreachable: {exc}"}

        return await asyncio.gather(*(one(url) for url in self.urls))

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            texts = await self._get_all("/metrics")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return web.Response(status=502, text=f"a worker is unreachable: {exc}\n")
        body = merge_expositions(texts, _MAX_GAUGES)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _mgmt(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            req = msgspec.json.decode(raw, type=MgmtRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return fail(
                f'bad request: {exc}; expected {{"mgmt_action": "<action>", "mgmt_data": {{...}}}}'
            )
        replies = await self._post_all(raw)
        failed = [(status, body) for status, body in replies
                  if status != 200 or not body.get("success")]  # fmt: skip
        if failed:
            status, body = failed[0]
            if len(failed) < len(replies):  # the workers now disagree: say so
                body = {**body, "message": f"applied by {len(replies) - len(failed)} of "
                        f"{len(replies)} workers only: {body.get('message')}"}  # fmt: skip
            return web.json_response(body, status=status)
        answers = [body["data"] for _, body in replies]
        data: Any
        if req.mgmt_action == "list_instances":
            data = _merge_list(answers)
        elif req.mgmt_action == "stats":
            data = _merge_stats(answers)
        elif req.mgmt_action == "get_policy":
            data = {**answers[0], "fallbacks": sum(a.get("fallbacks", 0) for a in answers)}
        else:
            data = answers[0]
        reply: dict[str, Any] = {"success": True, "data": data}
        if req.mgmt_action not in BUILTIN_ACTIONS:
            reply["workers"] = answers  # a policy's own action: each worker's answer
        return web.json_response(reply)

    async def _health(self, request: web.Request) -> web.Response:
        try:
            await self._get_all("/health")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return web.json_response({"healthy": False, "error": str(exc)}, status=503)
        return web.json_response({"healthy": True, "workers": len(self.urls)})

    async def start(self, host: str, mgmt_port: int | None, metrics_port: int | None) -> None:
        token = self.auth.any_token("admin")  # the workers check tokens too
        headers = {"Authorization": bearer(token)} if token else None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), headers=headers
        )
        for port, route in ((mgmt_port, "mgmt"), (metrics_port, "metrics")):
            if port is None:
                continue
            app = new_app(self.auth, host)
            app.router.add_get("/health", self._health)
            if route == "mgmt":
                app.router.add_post("/mgmt", self._mgmt)
            else:
                app.router.add_get("/metrics", self._metrics)
            runner, bound = await start_site(app, host, port, self.tls.server_context())
            self._runners.append(runner)
            setattr(self, f"{route}_port", bound)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()
