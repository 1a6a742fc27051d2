"""A Kubernetes API on 127.0.0.1 for the tests, and the controllers' part played by them.

``Emulator``: kmock's ``KubernetesEmulator`` (objects kept in memory, served by
create/get/list/watch/patch/delete over HTTP), extended with what the real API server
does and the code under test relies on: ``labelSelector`` on lists and watches
(equality terms), ``timeoutSeconds`` on watches, watch expiry (an ERROR event with a 410
Status, as the API server sends for a too-old resourceVersion) and injected failures
(an HTTP status for the next N matching requests, nothing applied).

``Controllers``: what the ReplicaSet controller, the kubelet and the EndpointSlice
controller would do for one Deployment: a scale change becomes pods that are real local
instance processes, one EndpointSlice per pod (each pod has its own
ports here, as pods with different port numbers get separate slices); a scale-down
deletes the pod with the lowest ``controller.kubernetes.io/pod-deletion-cost`` (ties:
the newest), first turning its endpoint not ready and terminating, then stopping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import string
from dataclasses import dataclass

import attrs
import kmock
import yaml
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from .procs import Proc

RESOURCES = ("apps/v1/deployments", "v1/pods", "discovery.k8s.io/v1/endpointslices")
COST = "controller.kubernetes.io/pod-deletion-cost"


@dataclass
class Fault:
    method: str  # GET, PATCH, ...
    plural: str  # deployments, pods, endpointslices
    status: int
    times: int = 1
    watch: bool | None = None  # GETs only: a watch (True), a list or get (False), any
    subresource: str | None = None
    hits: int = 0

    def matches(self, request) -> bool:
        if self.times <= 0 or str(request.method).upper().split(".")[-1] != self.method:
            return False
        if request.resource is None or request.resource.plural != self.plural:
            return False
        if self.subresource is not None and request.subresource != self.subresource:
            return False
        watching = request.params.get("watch") in ("true", "1")
        return self.watch is None or self.watch == watching


def _selected(obj: dict, selector: str | None) -> bool:
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    faults: list = attrs.field(factory=list)
    expire_watches: int = 0  # the next N watch requests get a 410 ERROR event
    watches: int = 0  # watch requests served
    _watchers: list = attrs.field(factory=list)  # an Event per open watch: set = expire it

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for resource in RESOURCES:
            self.resources[resource] = {}

    def fail(self, method: str, plural: str, status: int, times: int = 1, **kw) -> Fault:
        fault = Fault(method, plural, status, times, **kw)
        self.faults.append(fault)
        return fault

    async def _handle(self, request):
        for fault in self.faults:
            if fault.matches(request):
                fault.times -= 1
                fault.hits += 1
                return await self._render_error(kmock.KubernetesError(
                    status=fault.status, reason="Injected", message=f"injected {fault.status}",
                    details={}))  # fmt: skip
        if request.method == "POST" and request.namespace and isinstance(request.data, dict):
            # as the API server: an object created in a namespace says so
            request.data.setdefault("metadata", {}).setdefault("namespace", request.namespace)
        return await super()._handle(request)

    async def _serve_list(self, request):
        answer = await super()._serve_list(request)
        selector = request.params.get("labelSelector")
        answer["items"] = [obj for obj in answer["items"] if _selected(obj, selector)]
        return answer

    def expire(self) -> None:
        """End every open watch with a 410 ERROR event (resourceVersion too old)."""
        for expired in list(self._watchers):
            expired.set()

    async def _serve_watch(self, request):
        self.watches += 1
        expired = asyncio.Event()
        if self.expire_watches > 0:
            self.expire_watches -= 1
            expired.set()
        selector = request.params.get("labelSelector")
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        events = super()._serve_watch(request)
        self._watchers.append(expired)
        try:
            while True:
                nxt = asyncio.ensure_future(events.__anext__())
                gone = asyncio.ensure_future(expired.wait())
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait([nxt, gone], timeout=left, return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
                if not nxt.done():
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        await nxt
                    if expired.is_set():
                        yield {"type": "ERROR", "object": {
                            "apiVersion": "v1", "kind": "Status", "metadata": {},
                            "status": "Failure", "code": 410, "reason": "Expired",
                            "message": "too old resource version"}}  # fmt: skip
                    return  # expired, or timeoutSeconds passed: the stream ends
                try:
                    event = nxt.result()
                except StopAsyncIteration:
                    return
                if isinstance(event, dict) and not _selected(event.get("object") or {}, selector):
                    continue
                yield event
        finally:
            self._watchers.remove(expired)
            with contextlib.suppress(BaseException):
                await events.aclose()


def kubeconfig(url: str, namespace: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }


def write_kubeconfig(path, url: str, namespace: str) -> str:
    path.write_text(yaml.safe_dump(kubeconfig(url, namespace)))
    return str(path)


def client(url: str, namespace: str) -> AsyncClient:
    return AsyncClient(config=KubeConfig.from_dict(kubeconfig(url, namespace)),
                       namespace=namespace)  # fmt: skip


def deployment(name: str, replicas: int) -> Deployment:
    labels = {"app": name}
    return Deployment.from_dict({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "instance", "image": "x"}]}}},
        "status": {"replicas": 0, "readyReplicas": 0},
    })  # fmt: skip


def endpoint_slice(name: str, service: str, endpoints: list[dict], ports: dict) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": k, "port": v, "protocol": "TCP"} for k, v in ports.items()],
    }  # fmt: skip


def endpoint(pod: str, ready: bool = True, terminating: bool = False, address="127.0.0.1"):
    return {"addresses": [address], "targetRef": {"kind": "Pod", "name": pod},
            "conditions": {"ready": ready, "serving": ready,
                           "terminating": terminating}}  # fmt: skip


class Controllers:
    """The ReplicaSet, kubelet and EndpointSlice controllers' part for one Deployment."""

    def __init__(self, client: AsyncClient, deployment: str, service: str, block: str,
                 parameters: dict | None = None, interval: float = 0.05) -> None:  # fmt: skip
        self.client = client
        self.deployment = deployment
        self.service = service
        self.block, self.parameters = block, parameters or {}
        self.interval = interval
        self.pods: dict[str, dict] = {}  # pod name -> the local instance's spec
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.errors: list[str] = []
        self._hash = "".join(random.choices(string.ascii_lowercase + string.digits, k=10))
        self._order = itertools.count()
        self._born: dict[str, int] = {}
        self._task: asyncio.Task | None = None

    def _pod_name(self) -> str:
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        return f"{self.deployment}-{self._hash}-{suffix}"

    async def _add(self) -> None:
        name = self._pod_name()
        labels = {"app": self.deployment}
        await self.client.create(Pod.from_dict({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "instance", "image": "x"}]}}))  # fmt: skip
        # the kubelet: a real instance process (spawned without preexec_fn, so no Python
        # runs in a forked child while this process's gRPC threads are busy)
        proc = await asyncio.get_running_loop().run_in_executor(None, Proc, [
            "-m", "aios_fast.instance", "--block", self.block,
            "--parameters", json.dumps(self.parameters)])  # fmt: skip
        host, port, mgmt = "127.0.0.1", proc.info["port"], proc.info["mgmt_port"]
        self.pods[name] = proc
        self._born[name] = next(self._order)
        self.created.append(name)
        await self.client.create(EndpointSlice.from_dict(endpoint_slice(
            f"{name}-slice", self.service, [endpoint(name, address=host)],
            {"grpc": int(port), "mgmt": int(mgmt)})))  # fmt: skip

    async def _victim(self) -> str:
        async def cost(name: str) -> int:
            pod = await self.client.get(Pod, name)
            return int((pod.metadata.annotations or {}).get(COST, "0"))

        costs = {name: await cost(name) for name in self.pods}
        return min(self.pods, key=lambda name: (costs[name], -self._born[name]))

    async def _remove(self, name: str) -> None:
        slice_name = f"{name}-slice"
        proc = self.pods.pop(name)
        host = "127.0.0.1"
        await self.client.patch(EndpointSlice, slice_name, {"endpoints": [
            endpoint(name, ready=False, terminating=True, address=host)]},
            patch_type=PatchType.MERGE)  # fmt: skip
        # SIGTERM: the instance drains, then exits
        await asyncio.get_running_loop().run_in_executor(None, proc.stop)
        await self.client.delete(EndpointSlice, slice_name)
        await self.client.delete(Pod, name)
        self.deleted.append(name)

    async def reconcile(self) -> None:
        dep = await self.client.get(Deployment, self.deployment)
        want = dep.spec.replicas
        while len(self.pods) < want:
            await self._add()
        while len(self.pods) > want:
            await self._remove(await self._victim())
        n = len(self.pods)
        await self.client.patch(Deployment, self.deployment,
                                {"status": {"replicas": n, "readyReplicas": n}},
                                patch_type=PatchType.MERGE)  # fmt: skip

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an injected fault: the controllers go on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(None, p.stop) for p in self.pods.values()))
        self.pods.clear()
