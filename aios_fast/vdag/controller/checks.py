"""The controller's health and quality checks (``controller.policies`` of the document).

Health (``HealthCheck``): every ``healthCheckIntervalSeconds`` (default 10) each node's
block endpoint is probed (a gRPC connection made within ``healthCheckTimeoutSeconds``,
default 2): ``{label: {"block_id", "endpoint", "up"}}``. The ``healthChecker`` policy,
if any, gets ``{"health_check_data": that, "vdag_uri"}`` and its answer is kept as the
verdict (``POST /mgmt health``; ``aios_vdag_block_up{node, block}``).

Quality (``QualityCheck``): a completed task is sampled with probability
``parameters.sampleRate`` of the ``qualityChecker`` policy (default 0.01); a sample
(``{"input": {session_id, seq_no, data}, "output": {data}, "seconds"}``) waits in a
queue of at most ``parameters.maxQueued`` (default 1,000; beyond: dropped, counted)
and is handed to the policy's ``eval`` in a worker thread, off the tasks' path (the
policy may post it to an external audit URL). Counts and the last answers: ``POST
/mgmt quality``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from typing import Any

import grpc

from ...policy import PolicyRule
from ...service.periodic import Periodic
from ...tls import TLS
from ..compile import Plan

__all__ = ["HealthCheck", "QualityCheck"]

log = logging.getLogger("aios_fast.vdag.controller")


class HealthCheck:
    def __init__(self, plan: Plan, policy: PolicyRule | None, *, interval: float = 10.0,
                 timeout: float = 2.0, tls: TLS | None = None) -> None:  # fmt: skip
        self.plan = plan
        self.policy = policy
        self.timeout = timeout
        self.tls = tls or TLS()
        self.data: dict[str, dict] = {}
        self.verdict: Any = None
        self.error = ""
        self.rounds = 0
        self._periodic = Periodic(self.run_now, interval, log, "vDAG health check")

    async def _probe(self, endpoint: str) -> bool:
        channel = self.tls.aio_channel(endpoint)
        try:
            await asyncio.wait_for(channel.channel_ready(), self.timeout)
            return True
        except (asyncio.TimeoutError, grpc.aio.AioRpcError):
            return False
        finally:
            await channel.close()

    async def run_now(self) -> dict:
        endpoints = sorted({n.endpoint for n in self.plan.nodes.values()})
        ups = dict(zip(endpoints, await asyncio.gather(*map(self._probe, endpoints)), strict=True))
        self.data = {label: {"block_id": n.block_id, "endpoint": n.endpoint,
                             "up": ups[n.endpoint]}
                     for label, n in self.plan.nodes.items()}  # fmt: skip
        self.rounds += 1
        if self.policy is not None:
            try:
                self.verdict = self.policy.eval({"health_check_data": self.data,
                                                 "vdag_uri": self.plan.vdag_uri})  # fmt: skip
                self.error = ""
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("vDAG health checker policy failed: %s", self.error)
        return self.status()

    def status(self) -> dict:
        return {"rounds": self.rounds, "nodes": self.data, "verdict": self.verdict,
                "policy_error": self.error}  # fmt: skip

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()


class QualityCheck:
    def __init__(self, policy: PolicyRule) -> None:
        self.policy = policy
        params = policy.parameters
        self.rate = float(params.get("sampleRate", 0.01))
        self.max_queued = int(params.get("maxQueued", 1000))
        if not 0 <= self.rate <= 1 or self.max_queued < 1:
            raise ValueError("qualityChecker: sampleRate must be in 0..1, maxQueued >= 1")
        self.queue: asyncio.Queue | None = None
        self.sampled = self.checked = self.failed = self.dropped = 0
        self.last: deque = deque(maxlen=20)
        self._worker: asyncio.Task | None = None

    def offer(self, request: Any, out: Any, seconds: float) -> None:
        """A completed task: sampled at the configured rate (never blocks the task)."""
        if self.queue is None or random.random() >= self.rate:
            return
        self.sampled += 1
        if self.queue.qsize() >= self.max_queued:
            self.dropped += 1
            return
        self.queue.put_nowait({
            "input": {"session_id": request.session_id, "seq_no": request.seq_no,
                      "data": request.data},
            "output": {"data": out.data},
            "seconds": seconds,
        })  # fmt: skip

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            sample = await self.queue.get()
            try:
                answer = await loop.run_in_executor(None, self.policy.eval, sample)
                self.checked += 1
                self.last.append(answer)
            except Exception as exc:
                self.failed += 1
                log.error("vDAG quality checker policy failed: %s: %s", type(exc).__name__, exc)

    def status(self) -> dict:
        return {"sample_rate": self.rate, "sampled": self.sampled, "checked": self.checked,
                "failed": self.failed, "dropped": self.dropped,
                "queued": self.queue.qsize() if self.queue else 0,
                "last": list(self.last)}  # fmt: skip

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._worker = asyncio.ensure_future(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
