"""The Kubernetes actuator: the auto-scaler scales the instances' Deployment.

Same interface as ``LocalActuator`` (``start``, ``stop``, ``reap``, ``procs``), for a
block whose instances are the pods of a Deployment (``aios-fast block manifests``
writes it) and whose executor finds them in EndpointSlices (``--discover k8s://...``):

- ``start(count)`` sets the Deployment's scale to ``max(spec.replicas, readyReplicas +
  count)``, at most ``max_replicas``: pods still starting count, so a round repeated
  before they are ready does not add more. It returns no specs: the executor adds each
  pod itself once its endpoint is ready.
- ``stop(pod)`` (the auto-scaler has drained the pod in the executor already) marks the
  pod with ``controller.kubernetes.io/pod-deletion-cost`` (lowest: the ReplicaSet
  deletes it first), then scales down by one, never below ``min_replicas``. A pod
  already gone is not followed by a scale-down (its ReplicaSet replaces it; the next
  round decides again).
- Scale patches carry the Deployment's resourceVersion, so a concurrent change answers
  409 and the step is read and computed again. 409, 429, 5xx and connection failures
  are retried with backoff; 401/403 (RBAC), 404 and 422 fail at once. Counts and the
  last error are in ``status()`` (the auto-scaler's ``status`` shows them).
- ``reap()`` finds nothing: Kubernetes restarts crashed pods, and the discovery drains
  an endpoint that stops being ready.

RBAC it needs (the manifests' Role): get on deployments, get/patch on
deployments/scale (both for this Deployment only), patch on pods.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Set

from ..errors import AiosFastError
from ..kube import KubeCallError, Retrier, new_client

__all__ = ["DELETION_COST", "KubeActuator"]

log = logging.getLogger("aios_fast.kube_actuator")
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class _OwnedPods(Set):
    """The auto-scaler asks ``iid in actuator.procs`` before a downscale: here, whether
    ``iid`` is the name of one of the Deployment's pods (``<deployment>-<template
    hash>-<suffix>``). Kubernetes, not this process, holds the list, so it iterates
    over nothing."""

    def __init__(self, deployment: str) -> None:
        self._pattern = re.compile(re.escape(deployment) + r"-[a-z0-9]{1,10}-[a-z0-9]{5}\Z")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._pattern.match(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class KubeActuator:
    def __init__(
        self,
        deployment: str,
        *,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        min_replicas: int = 0,
        max_replicas: int = 1,
        deletion_cost: int = -1000,
        retrier: Retrier | None = None,
        client=None,
    ) -> None:
        if min_replicas < 0 or max_replicas < max(min_replicas, 1):
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, max_replicas >= 1, "
                             f"not {min_replicas}..{max_replicas}")  # fmt: skip
        self.deployment = deployment
        self.client = client if client is not None else new_client(kubeconfig, namespace)
        self.namespace = namespace
        self.min_replicas, self.max_replicas = min_replicas, max_replicas
        self.deletion_cost = str(deletion_cost)
        self.retrier = retrier or Retrier()
        self.procs = _OwnedPods(deployment)
        self.replicas: int | None = None  # the last scale this actuator set
        self.scale_ups = self.scale_downs = self.pods_marked = 0

    async def _read(self) -> tuple[int, int, str | None]:
        """(spec.replicas, status.readyReplicas, resourceVersion) of the Deployment."""
        from lightkube.resources.apps_v1 import Deployment

        dep = await self.client.get(Deployment, self.deployment, namespace=self.namespace)
        spec = dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1
        ready = (dep.status.readyReplicas or 0) if dep.status else 0
        return spec, ready, dep.metadata.resourceVersion

    async def _scale(self, replicas: int, version: str | None) -> None:
        from lightkube.resources.apps_v1 import Deployment
        from lightkube.types import PatchType

        body: dict = {"spec": {"replicas": replicas}}
        if version:  # optimistic concurrency: 409 if the Deployment changed meanwhile
            body["metadata"] = {"resourceVersion": version}
        await self.client.patch(Deployment.Scale, self.deployment, body,
                                namespace=self.namespace, patch_type=PatchType.MERGE)  # fmt: skip
        self.replicas = replicas

    async def start(self, count: int) -> list[dict]:
        async def step() -> tuple[int, int]:
            spec, ready, version = await self._read()
            target = min(self.max_replicas, max(spec, ready + count))
            if target != spec:
                await self._scale(target, version)
            return spec, target

        spec, target = await self.retrier.call(f"scale up deployment {self.deployment}", step)
        if target > spec:
            self.scale_ups += 1
            log.info("deployment %s: %d -> %d replicas", self.deployment, spec, target)
        return []  # the executor adds the pods from their EndpointSlices once ready

    async def stop(self, instance_id: str) -> None:
        if instance_id not in self.procs:
            raise AiosFastError(f"{instance_id!r} is not a pod of deployment {self.deployment}")
        from lightkube.resources.core_v1 import Pod
        from lightkube.types import PatchType

        async def mark() -> None:
            patch = {"metadata": {"annotations": {DELETION_COST: self.deletion_cost}}}
            await self.client.patch(Pod, instance_id, patch, namespace=self.namespace,
                                    patch_type=PatchType.MERGE)  # fmt: skip

        try:
            await self.retrier.call(f"mark pod {instance_id} for deletion", mark)
        except KubeCallError as exc:
            if exc.status != 404:
                raise
            log.warning("pod %s is already gone; not scaling down", instance_id)
            return
        self.pods_marked += 1

        async def step() -> tuple[int, int]:
            spec, _, version = await self._read()
            target = max(self.min_replicas, spec - 1)
            if target != spec:
                await self._scale(target, version)
            return spec, target

        spec, target = await self.retrier.call(f"scale down deployment {self.deployment}", step)
        if target < spec:
            self.scale_downs += 1
            log.info("deployment %s: %d -> %d replicas (%s goes)", self.deployment, spec,
                     target, instance_id)  # fmt: skip
        else:
            raise AiosFastError(f"deployment {self.deployment} is at min_replicas "
                                f"{self.min_replicas}: {instance_id} stays")  # fmt: skip

    def reap(self) -> list[str]:
        return []

    async def stop_all(self) -> None:
        """The pods are Kubernetes's: they stay. Only the API client closes."""
        await self.client.close()

    def status(self) -> dict:
        return {
            "kind": "kubernetes",
            "namespace": self.namespace,
            "deployment": self.deployment,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "replicas_set": self.replicas,
            "scale_ups": self.scale_ups,
            "scale_downs": self.scale_downs,
            "pods_marked": self.pods_marked,
            **self.retrier.status(),
        }
