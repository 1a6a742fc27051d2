"""Instances that come and go, found in Redis (the original's mapper role).

An instance started with ``--register redis://... --block-id B --instance-id I`` keeps
its key (``aios_fast.wire.instance_key``) alive with a TTL (``instance.registration``).
An executor started with ``--discover redis://... --block-id B`` scans those keys every
``interval``: new ones join the balancer, vanished ones (stopped, or dead and expired)
are drained and removed once their in-flight tasks are done (or after ``drain_grace``
seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging

from ..service.periodic import Periodic
from ..wire import instance_key
from .config import InstanceSpec

__all__ = ["Discovery"]

log = logging.getLogger("aios_fast.discovery")


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
        found = await self.scan()
        loop = asyncio.get_running_loop()
        for iid, target in found.items():
            if iid in self._leaving:  # came back
                del self._leaving[iid]
                self.executor.set_draining(iid, False)
            if self.known.get(iid) != target:
                if iid in self.known:
                    await self.executor.remove_instance(iid)
                self.executor.add_instance(InstanceSpec(iid, target, health=self.health[iid]))
                self.known[iid] = target
                log.info("instance %s joined at %s", iid, target)
        for iid in list(self.known):
            if iid not in found and iid not in self._leaving:
                self._leaving[iid] = loop.time() + self.drain_grace
                self.executor.set_draining(iid, True)
                log.info("instance %s left; draining", iid)
        for iid, deadline in list(self._leaving.items()):
            record = self.executor.instances.get(iid)
            if record is None or record.link.inflight == 0 or loop.time() >= deadline:
                del self._leaving[iid]
                self.known.pop(iid, None)
                if record is not None:
                    await self.executor.remove_instance(iid)

    def start(self) -> None:
        self._scans.start()

    async def stop(self) -> None:
        await self._scans.stop()
        await self.client.aclose()
