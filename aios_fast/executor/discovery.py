"""Instances that come and go, found in Redis (the original's mapper role).

An instance started with ``--register redis://... --block-id B --instance-id I`` keeps
its key (``aios_fast.wire.instance_key``) alive with a TTL (``instance.registration``).
An executor started with ``--discover redis://... --block-id B`` scans those keys every
``interval``: new ones join the balancer, vanished ones (stopped, or dead and expired)
are drained and removed once their in-flight tasks are done (or after ``drain_grace``
seconds).
"""

from __future__ import annotations

import json
import logging

from ..service.periodic import Periodic
from ..wire import instance_key
from .config import InstanceSpec
from .reconcile import Instances, Reconciler

__all__ = ["Discovery"]

log = logging.getLogger("aios_fast.discovery")


class Discovery:
    """Mirrors a block's registered instances into an executor (through the one
    ``Reconciler`` every discovery source feeds)."""

    def __init__(self, instances: Instances, url: str, block_id: str, interval: float = 1.0,
                 drain_grace: float = 30.0) -> None:  # fmt: skip
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url)
        self.pattern = instance_key(block_id)
        self.reconciler = Reconciler(instances, log, "its registration", drain_grace)
        self._scans = Periodic(self.sync_once, interval, log, "discovery scan")

    @property
    def known(self) -> dict[str, InstanceSpec]:
        return self.reconciler.known

    async def scan(self) -> dict[str, InstanceSpec]:
        """instance id -> spec of every live registration."""
        found = {}
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
            found[iid] = InstanceSpec(iid, target, health=mgmt)
        return found

    async def sync_once(self) -> None:
        await self.reconciler.apply(await self.scan())

    def start(self) -> None:
        self._scans.start()

    async def stop(self) -> None:
        await self._scans.stop()
        await self.client.aclose()

    def status(self) -> dict:
        r = self.reconciler
        return {"kind": "redis", "instances": sorted(r.known), "leaving": sorted(r.leaving),
                "added": r.added, "removed": r.removed}  # fmt: skip
