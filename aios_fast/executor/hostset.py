"""The host set: the one owner of an executor's instance records (Envoy's host set).

Each instance has one ``Instance`` record: its spec, its link, and the flags that decide
whether it may get tasks: ``healthy`` (the health checker's verdict), ``draining``,
``ejected`` (the outlier detector's), ``weight``, plus its latest ``/stats``. Only the
host set writes them. The balancer (``aios_fast.lb``) is the host set's index for
picking: the host set pushes every change into it, and builds a new one from the records
when the policy changes; nobody else writes to it. The router reads the host set through
``pick``, ``link_of``, ``least_loaded`` and ``on_dispatch``/``on_finish``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .config import InstanceSpec
from .links import InstanceLink, Link, LinkSettings, OnSettled, OnState, UnaryLink
from .native_link import NativeLink

__all__ = ["HostSet", "Instance", "LinkFactory", "default_links"]

# (instance id, target, on_state(id, up), on_settled(task, exc), settings) -> Link
LinkFactory = Callable[[str, str, OnState, OnSettled, LinkSettings], Link]


@dataclass(eq=False)
class Instance:
    """Everything the executor knows of one instance. ``healthy`` is the health
    checker's verdict (the link's own state is ``link.up``); ``draining`` and ``weight``
    are what the balancer was told; ``metrics`` the instance's latest ``GET /stats``;
    the rest is outlier ejection: failures in a row, whether it is ejected now, how
    often it was (the multiplier of the next ejection) and when it was last let back."""

    spec: InstanceSpec
    link: Link
    healthy: bool = True
    draining: bool = False
    weight: float = 1.0
    metrics: dict | None = None
    failures: int = 0
    ejected: bool = False
    ejections: int = 0
    returned_at: float = 0.0

    @property
    def available(self) -> bool:
        """May get new tasks, as far as its state goes (the balancer adds draining)."""
        return self.link.up and self.healthy and not self.ejected

    @property
    def id(self) -> str:
        return self.spec.id


def default_links(spec: InstanceSpec) -> LinkFactory:
    return stream_link if spec.protocol == "stream" else UnaryLink


def stream_link(instance_id: str, target: str, on_state: OnState, on_settled: OnSettled,
                settings: LinkSettings) -> Link:  # fmt: skip
    """The stream link the settings' transport names (native falls back to gRPC itself
    for an instance that offers no native link)."""
    kind = InstanceLink if settings.transport == "grpc" else NativeLink
    return kind(instance_id, target, on_state, on_settled, settings)


class HostSet:
    """The instances of one executor and the balancer that picks among them."""

    def __init__(self, balancer: Any, settings: LinkSettings, on_settled: OnSettled,
                 instance_inflight: int, links: Callable[[InstanceSpec], LinkFactory]
                 = default_links) -> None:  # fmt: skip
        self._records: dict[str, Instance] = {}
        self.links: dict[str, Link] = {}  # id -> link: the router's per-task lookup
        self.balancer = balancer
        self.pick = balancer.pick  # the router's per-task call, bound once
        self.on_dispatch = balancer.on_dispatch
        self.on_finish = balancer.on_finish
        self.link_settings = settings
        self.on_settled = on_settled  # every link's task ends go there (the router)
        self._links = links
        self.instance_inflight = instance_inflight

    # ------------------------------------------------------------------ reading

    @property
    def records(self) -> Mapping[str, Instance]:
        """id -> record (read-only: change them through the methods below)."""
        return self._records

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._records

    def __iter__(self) -> Iterator[Instance]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def get(self, instance_id: str) -> Instance | None:
        return self._records.get(instance_id)

    def known(self, instance_id: str) -> Instance:
        record = self._records.get(instance_id)
        if record is None:
            raise KeyError(instance_id)
        return record

    def link_of(self, instance_id: str) -> Link:
        return self.links[instance_id]

    def available(self) -> list[str]:
        """The instances the balancer may pick now (up, healthy, not draining, not
        ejected)."""
        return list(self.balancer.available())

    def least_loaded(self) -> Link | None:
        """The available instance with the fewest tasks, if it has room for one more."""
        best = None
        limit = self.instance_inflight
        for iid in self.balancer.available():
            link = self._records[iid].link
            if link.inflight < limit and (best is None or link.inflight < best.inflight):
                best = link
        return best

    def ejected_count(self) -> int:
        return sum(r.ejected for r in self._records.values())

    def describe(self, instance_id: str) -> dict:
        """One instance as the management API shows it."""
        record = self.known(instance_id)
        link, spec = record.link, record.spec
        return {
            "id": instance_id,
            "target": spec.target,
            "protocol": spec.protocol,
            "transport": link.transport,
            "health": spec.health,
            "up": link.up,
            "healthy": record.healthy,
            "draining": record.draining,
            "available": self.balancer.state(instance_id)["available"],
            "weight": record.weight,
            "ejected": record.ejected,
            "ejections": record.ejections,
            "inflight": link.inflight,
            "tasks_sent": link.tasks_sent,
            "completed": link.completed,
            "failed": link.failed,
            "lost": link.lost,
        }

    # ------------------------------------------------------------------ membership

    def add(self, spec: InstanceSpec) -> Instance:
        if spec.id in self._records:
            raise ValueError(f"instance {spec.id!r} is already known")
        if spec.protocol not in ("stream", "unary"):
            raise ValueError(f"instance {spec.id!r}: unknown protocol {spec.protocol!r}")
        self.balancer.add(spec.id)
        self.balancer.set_healthy(spec.id, False)  # until its link is up
        factory = self._links(spec)
        link = factory(spec.id, spec.target, self.link_state, self.on_settled,
                       self.link_settings)  # fmt: skip
        record = Instance(spec, link, weight=self.balancer.state(spec.id)["weight"])
        self._records[spec.id] = record
        self.links[spec.id] = link
        link.start()
        return record

    def remove(self, instance_id: str) -> Instance:
        """Forget an instance (its link is the caller's to close)."""
        record = self._records.pop(instance_id)
        del self.links[instance_id]
        self.balancer.remove(instance_id)
        return record

    # ------------------------------------------------------------------ flags

    def link_state(self, instance_id: str, up: bool) -> None:
        """A link went up or down."""
        record = self._records.get(instance_id)
        if record is not None:
            self.balancer.set_healthy(instance_id, record.available)

    def set_health(self, instance_id: str, healthy: bool) -> None:
        record = self.known(instance_id)
        record.healthy = healthy
        self.balancer.set_healthy(instance_id, record.available)

    def set_draining(self, instance_id: str, draining: bool) -> None:
        record = self.known(instance_id)
        self.balancer.set_draining(instance_id, draining)
        record.draining = draining

    def set_weight(self, instance_id: str, weight: float) -> None:
        """For weighted policies; the balancer refuses a bad weight (ValueError)."""
        record = self.known(instance_id)
        self.balancer.set_weight(instance_id, weight)
        record.weight = weight

    def set_ejected(self, record: Instance, ejected: bool, now: float) -> None:
        """The outlier detector's flag (a record removed meanwhile is left alone)."""
        record.ejected = ejected
        if not ejected:
            record.returned_at = now
        if self._records.get(record.id) is record:
            self.balancer.set_healthy(record.id, record.available)

    def set_metrics(self, record: Instance, metrics: dict | None) -> None:
        record.metrics = metrics

    # ------------------------------------------------------------------ policy

    def replace_balancer(self, new: Any) -> None:
        """A new policy: the new balancer is built from the records (weights, health,
        draining) and takes over the old one's outstanding counts."""
        old = self.balancer
        for iid, record in self._records.items():
            new.add(iid, record.weight)
            new.set_healthy(iid, record.available)
            new.set_draining(iid, record.draining)
            for _ in range(old.state(iid)["outstanding"]):
                new.on_dispatch(iid)
        self.balancer = new
        self.pick = new.pick
        self.on_dispatch = new.on_dispatch
        self.on_finish = new.on_finish
