"""An instance's registration in Redis, for executors that discover their instances
(``aios_fast.executor.discovery``): the key ``aios_fast.wire.instance_key(block,
instance)`` = {"target": "host:port", "mgmt": "host:port"}, kept alive with a TTL
refreshed every TTL/3, and deleted when the instance stops."""

from __future__ import annotations

import json
import logging

from ..service.periodic import Periodic
from ..wire import instance_key

__all__ = ["Registration"]

log = logging.getLogger("aios_fast.discovery")


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
