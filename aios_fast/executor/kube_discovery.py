"""Instances found in Kubernetes EndpointSlices (the alternative to Redis registration,
``executor.discovery``).

An executor started with ``--discover k8s://NAMESPACE/SERVICE`` (``k8s://SERVICE``: the
namespace of its kubeconfig context or its pod) lists the EndpointSlices of the
instances' Service (label ``kubernetes.io/service-name=SERVICE``), then watches them
from the list's resourceVersion. Every ready endpoint (``conditions.ready`` true or
unset, as the API defines it) of a slice whose ports include one named ``grpc`` is an
instance: its id is the pod's name (``targetRef``), its link target ``ADDRESS:grpc`` and
its health address ``ADDRESS:mgmt`` (when the slice has a ``mgmt`` port).

- An endpoint joins the balancer once (an id already known is not added again, whatever
  the slices and watch restarts repeat); one that vanishes, turns not ready or
  terminating is drained and removed once its in-flight tasks are done (or after
  ``drain_grace`` seconds).
- A watch that expires (410 Gone: the resourceVersion is too old) is followed by a new
  list, whose result replaces the slices seen so far; a watch that fails otherwise (API
  down, 5xx, 403) is retried after a backoff, with a new list. Until then the known
  instances keep serving.
- An instance removed through the management API (the auto-scaler drains it before its
  pod goes) is not added back while its endpoint stays: only an endpoint that leaves and
  comes back is new.
"""

from __future__ import annotations

import asyncio
import logging
import re

from ..errors import AiosFastError
from ..kube import Retrier, describe_error, error_status, new_client
from ..service.periodic import Periodic
from .config import InstanceSpec
from .reconcile import Instances, Reconciler

__all__ = ["SERVICE_LABEL", "KubeDiscovery", "parse_discover_url"]

log = logging.getLogger("aios_fast.kube_discovery")
SERVICE_LABEL = "kubernetes.io/service-name"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def parse_discover_url(url: str) -> tuple[str | None, str]:
    """``k8s://NAMESPACE/SERVICE`` or ``k8s://SERVICE`` -> (namespace or None, service)."""
    rest = url[len("k8s://") :] if url.startswith("k8s://") else None
    parts = rest.split("/") if rest else []
    if not parts or len(parts) > 2 or not all(_NAME.match(p) and len(p) <= 63 for p in parts):
        raise AiosFastError(
            f"--discover wants k8s://[NAMESPACE/]SERVICE (lowercase DNS names), not {url!r}"
        )
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def slice_instances(obj) -> dict[str, InstanceSpec]:
    """The ready instances of one EndpointSlice (a lightkube model): id -> spec."""
    ports = {p.name: p.port for p in (obj.ports or []) if p.name and p.port}
    grpc, mgmt = ports.get("grpc"), ports.get("mgmt")
    if grpc is None:
        return {}
    found = {}
    for endpoint in obj.endpoints or []:
        conditions = endpoint.conditions
        if conditions is not None and (conditions.ready is False or conditions.terminating):
            continue
        if not endpoint.addresses:
            continue
        address = endpoint.addresses[0]
        host = f"[{address}]" if ":" in address else address
        ref = endpoint.targetRef
        iid = ref.name if ref is not None and ref.name else f"{address}-{grpc}"
        found[iid] = InstanceSpec(iid, f"{host}:{grpc}",
                                  health=f"{host}:{mgmt}" if mgmt else "")  # fmt: skip
    return found


class KubeDiscovery:
    """Mirrors the ready endpoints of the instances' Service into an executor."""

    def __init__(self, instances: Instances, url: str, *, kubeconfig: str | None = None,
                 drain_grace: float = 30.0, watch_timeout: int = 290,
                 backoff_cap: float = 10.0, client=None) -> None:  # fmt: skip
        self.namespace, self.service = parse_discover_url(url)
        self.client = client if client is not None else new_client(kubeconfig, self.namespace)
        self.labels = {SERVICE_LABEL: self.service}
        self.reconciler = Reconciler(instances, log, "its Service", drain_grace)
        self.watch_timeout = watch_timeout
        self.backoff_cap = backoff_cap
        self.slices: dict[str, dict[str, InstanceSpec]] = {}  # slice name -> its instances
        self.resource_version: str | None = None
        self.lists = self.events = self.expiries = self.watch_errors = 0
        self.last_error: str | None = None
        self._retrier = Retrier(attempts=3)
        self._task: asyncio.Task | None = None
        self._sweeper = Periodic(self._sweep, 0.25, log, "endpoint drain sweep")

    # ------------------------------------------------------------------ state

    async def sync_once(self) -> None:
        """List the slices and make the executor's instances match them."""
        from lightkube.resources.discovery_v1 import EndpointSlice

        async def list_all():
            listing = self.client.list(EndpointSlice, namespace=self.namespace,
                                       labels=self.labels)  # fmt: skip
            items = [obj async for obj in listing]
            try:
                version = listing.resourceVersion
            except Exception:  # an empty answer without metadata (not a real API server)
                version = None
            return items, version

        what = f"list EndpointSlices of service {self.service}"
        items, version = await self._retrier.call(what, list_all)
        self.lists += 1
        self.slices = {obj.metadata.name: slice_instances(obj) for obj in items}
        self.resource_version = version
        await self.reconcile()

    def apply_event(self, kind: str, obj) -> None:
        self.events += 1
        name = obj.metadata.name
        if kind == "DELETED":
            self.slices.pop(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self.slices[name] = slice_instances(obj)
        if obj.metadata.resourceVersion:
            self.resource_version = obj.metadata.resourceVersion

    async def reconcile(self) -> None:
        wanted: dict[str, InstanceSpec] = {}
        for found in self.slices.values():
            wanted.update(found)
        await self.reconciler.apply(wanted)

    async def _sweep(self) -> None:
        await self.reconciler.sweep()

    @property
    def known(self) -> dict[str, InstanceSpec]:
        return self.reconciler.known

    async def _watch(self) -> None:
        from lightkube.resources.discovery_v1 import EndpointSlice
        from lightkube.types import on_error_raise

        stream = self.client.watch(
            EndpointSlice, namespace=self.namespace, labels=self.labels,
            resource_version=self.resource_version, server_timeout=self.watch_timeout,
            on_error=on_error_raise,
        )  # fmt: skip
        async for kind, obj in stream:
            if kind == "BOOKMARK":
                continue
            self.apply_event(kind, obj)
            await self.reconcile()

    async def _run(self) -> None:
        delay = 0.0
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                if delay:  # after a failure: start again from a fresh list
                    await self.sync_once()
                    delay = 0.0
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status = error_status(exc)
                text = describe_error(exc)
                if status == 410:
                    self.expiries += 1
                    log.info("EndpointSlice watch expired (%s); listing again", text)
                    delay = 0.01
                    continue
                self.watch_errors += 1
                self.last_error = f"EndpointSlice watch: {text}"
                delay = min(self.backoff_cap, max(0.2, delay * 2))
                log.warning("%s; listing again in %.1fs", self.last_error, delay)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
            self._sweeper.start()

    async def stop(self) -> None:
        await self._sweeper.stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        await self.client.close()

    def status(self) -> dict:
        return {
            "kind": "kubernetes",
            "service": self.service,
            "namespace": self.namespace,
            "instances": sorted(self.reconciler.known),
            "leaving": sorted(self.reconciler.leaving),
            "lists": self.lists,
            "events": self.events,
            "watch_expiries": self.expiries,
            "watch_errors": self.watch_errors,
            "added": self.reconciler.added,
            "removed": self.reconciler.removed,
            "last_error": self.last_error,
            **self._retrier.status(),
        }
