"""One reconcile of the wanted instance set, fed by every discovery source (Redis
registrations, Kubernetes EndpointSlices), as Envoy's cluster manager takes every
discovery service's hosts through one update path.

``Reconciler.apply(wanted)`` makes the executor's discovered instances match ``wanted``
(id -> InstanceSpec):

- a new id joins once (an id the management API added meanwhile is left alone, logged);
- an id whose address changed is removed and added again;
- an id no longer wanted is drained, and removed once its in-flight tasks are done (or
  after ``drain_grace`` seconds; ``sweep`` checks, each apply and on a timer);
- an id that comes back while draining is undrained;
- an instance removed through the management API is not added back while it stays
  wanted: only one that leaves and comes back is new.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .config import InstanceSpec

__all__ = ["Instances", "Reconciler"]


class Instances(Protocol):
    """What the reconcile may do to the executor's instance set."""

    def has(self, instance_id: str) -> bool: ...

    def inflight_of(self, instance_id: str) -> int: ...

    def add_instance(self, spec: InstanceSpec) -> object: ...

    async def remove_instance(self, instance_id: str, drain_timeout: float = 0.0) -> int: ...

    def set_draining(self, instance_id: str, draining: bool) -> None: ...


class Reconciler:
    def __init__(self, instances: Instances, log: logging.Logger, what: str,
                 drain_grace: float = 30.0) -> None:  # fmt: skip
        self.instances = instances
        self.log = log
        self.what = what  # where the instances are found, for the log ("its Service")
        self.drain_grace = drain_grace
        self.known: dict[str, InstanceSpec] = {}  # in the executor through us
        self.leaving: dict[str, float] = {}  # id -> deadline
        self.added = self.removed = 0

    async def apply(self, wanted: dict[str, InstanceSpec]) -> None:
        ins = self.instances
        for iid, spec in wanted.items():
            if iid in self.leaving:  # back before it was removed
                del self.leaving[iid]
                if ins.has(iid):
                    ins.set_draining(iid, False)
            known = self.known.get(iid)
            if known is not None and (known.target, known.health) == (spec.target, spec.health):
                continue
            if known is not None and ins.has(iid):  # moved: a new address
                await ins.remove_instance(iid)
            try:
                ins.add_instance(spec)
            except ValueError as exc:  # added by the management API meanwhile
                self.log.warning("instance %s: %s", iid, exc)
            self.known[iid] = spec
            self.added += 1
            self.log.info("instance %s joined at %s", iid, spec.target)
        loop = asyncio.get_running_loop()
        for iid in list(self.known):
            if iid not in wanted and iid not in self.leaving:
                self.leaving[iid] = loop.time() + self.drain_grace
                if ins.has(iid):
                    ins.set_draining(iid, True)
                self.log.info("instance %s left %s; draining", iid, self.what)
        await self.sweep()

    async def sweep(self) -> None:
        """Remove the leaving instances that finished their tasks (or ran out of time)."""
        ins = self.instances
        now = asyncio.get_running_loop().time()
        for iid, deadline in list(self.leaving.items()):
            present = ins.has(iid)
            if not present or ins.inflight_of(iid) == 0 or now >= deadline:
                del self.leaving[iid]
                self.known.pop(iid, None)
                if present:
                    await ins.remove_instance(iid)
                    self.removed += 1
