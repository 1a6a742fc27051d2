"""Instances that come and go: registration with heartbeats in Redis (the original's
mapper role).

An instance started with ``--register redis://... --block-id B --instance-id I`` keeps
the key ``aios:block:B:instance:I`` = {"target": "host:port", "mgmt": "host:port"} alive
with a TTL, refreshed every TTL/3, and deletes it when it stops. An executor started
with ``--discover redis://... --block-id B`` scans those keys every ``interval``: new
ones join the balancer, vanished ones (stopped, or dead and expired) are drained and
removed once their in-flight tasks are done (or after ``drain_grace`` seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging

from ._periodic import Periodic

__all__ = ["Discovery", "Registration", "instance_key"]

log = logging.getLogger("aios_fast.discovery")


def instance_key(block_id: str, instance_id: str = "*") -> str:
    return f"aios:block:{block_id}:instance:{instance_id}"


class Registration:
    """Keeps one instance's key alive while the instance runs."""

    def __init__(self, url: str, block_id: str, instance_id: str, target: str,
                 mgmt: str = "", ttl: float = 3.0) -> None:  # fmt: skip
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url)
        self.key = instance_key(block_id, instance_id)
        self.value = json.dumps({"target": target, "mgmt": mgmt})
        self.ttl = ttl
        # Redis away: keep beating; the key may expire meanwhile, and comes back.
        self._beats = Periodic(self._beat, ttl / 3, log, f"heartbeat for {self.key}")

    async def start(self) -> None:
        await self._beat()
        self._beats.start()

    async def _beat(self) -> None:
        await self.client.set(self.key, self.value, px=int(self.ttl * 1000))

    async def stop(self) -> None:
        await self._beats.stop()
        try:
            await self.client.delete(self.key)
        finally:
            await self.client.aclose()


class Discovery:
    """Mirrors a block's registered instances into an executor."""

    def __init__(self, executor, url: str, block_id: str, interval: float = 1.0,
                 drain_grace: float = 30.0) -> None:  # fmt: skip
        import redis.asyncio as redis

        self.executor = executor
        self.client = redis.Redis.from_url(url)
        self.pattern = instance_key(block_id)
        self.drain_grace = drain_grace
        self.known: dict[str, str] = {}  # instance id -> target
        self._leaving: dict[str, float] = {}
        self._scans = Periodic(self.sync_once, interval, log, "discovery scan")

    async def scan(self) -> dict[str, str]:
        """instance id -> gRPC target of every live registration."""
        found = {}
        self.health: dict[str, str] = {}
        async for key in self.client.scan_iter(match=self.pattern, count=500):
            raw = await self.client.get(key)
            if raw is None:
                continue
            try:
                value = json.loads(raw)
                target, mgmt = value["target"], value.get("mgmt", "")
            except (ValueError, KeyError, TypeError):
                log.error("ignoring malformed registration %s: %r", key, raw)
                continue
            iid = key.decode().rsplit(":", 1)[1]
            found[iid] = target
            self.health[iid] = mgmt
        return found

    async def sync_once(self) -> None:
        from .executor import InstanceSpec

        found = await self.scan()
        loop = asyncio.get_running_loop()
        for iid, target in found.items():
            if iid in self._leaving:  # came back
                del self._leaving[iid]
                self.executor.balancer.set_draining(iid, False)
            if self.known.get(iid) != target:
                if iid in self.known:
                    await self.executor.remove_instance(iid)
                self.executor.add_instance(InstanceSpec(iid, target, health=self.health[iid]))
                self.known[iid] = target
                log.info("instance %s joined at %s", iid, target)
        for iid in list(self.known):
            if iid not in found and iid not in self._leaving:
                self._leaving[iid] = loop.time() + self.drain_grace
                self.executor.balancer.set_draining(iid, True)
                log.info("instance %s left; draining", iid)
        for iid, deadline in list(self._leaving.items()):
            link = self.executor.links.get(iid)
            if link is None or link.inflight == 0 or loop.time() >= deadline:
                del self._leaving[iid]
                self.known.pop(iid, None)
                if link is not None:
                    await self.executor.remove_instance(iid)

    def start(self) -> None:
        self._scans.start()

    async def stop(self) -> None:
        await self._scans.stop()
        await self.client.aclose()
