"""``aios-fast vdag check`` and ``aios-fast vdag up``.

``vdag check``: a vDAG document checked without running anything.

``check(path, blocks=[a.json, ...], vdags=[sub.json, ...])`` reads the document, lists
the problems of its graph (``aios_fast.vdag.problems``) and, when block documents are
given, compiles it against them (blocks named or assigned, sub-vDAGs expanded):
one line per problem, each naming the node, exit 2; else a one-line summary (or the
compiled document as JSON) and exit 0.

``vdag up``: the document checked and compiled against the block documents given (no
registry needed), then every block started locally (as ``block up`` does: executor,
instances, sidecars), the document compiled again with their real endpoints, and the
vDAG controller started (``python -m aios_fast.vdag.controller``); every endpoint is
printed (``--json``: one JSON line). ``--traffic N`` sends N tasks through the
controller, checked: every answer must be OK, and when the document's
``controller.initParameters.trafficSamples`` names a ``module:function`` returning
``[(data, expected), ...]`` (as ``Block.traffic_samples``), the tasks carry those and
at least ``trafficMinAgreement`` (default 1.0) of the answers must carry the expected
fields. ``--once`` stops everything after the traffic. ``--registry URL``: the
controller stores the compiled vDAG there and registers itself (leaving on stop).

``vdag manifests``: the Kubernetes objects of every block (``block manifests``) and of
the controller: a ConfigMap with the document compiled against the blocks' executor
Services (``<block>-executor.<namespace>.svc:<grpc port>``), a Deployment running
``python -m aios_fast.vdag.controller`` (token from the Secret ``<vdag>-tokens``; the
blocks' instances present their own block's token to the next block and to the
controller, so a vDAG's blocks and controller share one token value) and a Service
(gRPC 50061, HTTP 18061 with Prometheus scrape annotations).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import grpc
import msgspec

from ..errors import AiosFastError
from ..protos import vdag_pb2
from ..service import runtime
from ..tls import TLS
from ..vdag import VDagDoc, VDagError, compile_vdag, load, problems
from .block_up import BlockDoc, LocalBlock, use_free_ports
from .traffic import _checked_samples

__all__ = ["check", "drive_vdag", "load_blocks", "load_vdags", "manifests", "up"]

CONTROLLER_PORTS = {"grpc": 50061, "http": 18061}  # --ports default


def load_blocks(paths: list[str]) -> list[dict]:
    """Block documents (JSON files, each an object with an ``id``)."""
    blocks = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                block = json.loads(f.read())
        except OSError as exc:
            raise AiosFastError(f"cannot read block document: {exc}") from None
        except ValueError as exc:
            raise AiosFastError(f"block document {path}: not JSON ({exc})") from None
        if not isinstance(block, dict) or not isinstance(block.get("id"), str):
            raise AiosFastError(f"block document {path}: needs a string 'id'")
        blocks.append(block)
    return blocks


def load_vdags(paths: list[str]) -> dict[str, VDagDoc]:
    """Sub-vDAG documents by their vdagURI."""
    return {doc.uri: doc for doc in (load(p) for p in paths)}


def check(path: str, blocks: list[str] | None = None, vdags: list[str] | None = None,
          as_json: bool = False, out=None, err=None) -> int:  # fmt: skip
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        doc = load(path)
        lines = problems(doc)
        if not lines and blocks is not None:
            try:
                plan = compile_vdag(doc, load_blocks(blocks), load_vdags(vdags or []))
            except VDagError as exc:
                lines = exc.lines
    except VDagError as exc:
        lines = exc.lines
    if lines:
        for line in lines:
            print(f"{path}: {line}", file=err)
        return 2
    if as_json:
        print(json.dumps(_builtins(doc)), file=out)
    elif blocks is None:
        print(f"{path}: ok: {len(doc.nodes)} nodes (blocks not checked: give --blocks)",
              file=out)  # fmt: skip
    else:
        print(f"{path}: ok: {len(plan.nodes)} nodes on blocks "
              f"{', '.join(sorted({n.block_id for n in plan.nodes.values()}))}",
              file=out)  # fmt: skip
    return 0


def _builtins(doc: VDagDoc) -> dict:
    import msgspec

    return msgspec.to_builtins(doc)


# ---------------------------------------------------------------------- vdag up


def _samples(doc: VDagDoc) -> tuple[list | None, float]:
    params = doc.controller.get("initParameters") or {}
    spec = params.get("trafficSamples")
    floor = float(params.get("trafficMinAgreement", 1.0))
    if not spec:
        return None, floor
    module, _, name = str(spec).partition(":")
    where = f"controller.initParameters.trafficSamples {spec!r}"
    try:
        fn = getattr(importlib.import_module(module), name)
        samples = fn(dict(params))
    except Exception as exc:
        raise AiosFastError(f"{where}: {type(exc).__name__}: {exc}") from None
    return _checked_samples(samples, where), floor


async def drive_vdag(target: str, tasks: int, *, concurrency: int = 32,
                     samples: list | None = None, timeout: float = 30.0,
                     tls: TLS | None = None) -> dict:  # fmt: skip
    """Send ``tasks`` tasks to a vDAG controller's infer; a summary: completed, errors
    by (code, node), wrong answers, checked, agreement, tasks/s, p50/p99 seconds."""
    tls = tls or TLS()
    channel = tls.aio_channel(target)
    call = channel.unary_unary("/vDAGInferenceService/infer")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    wrong = checked = 0
    todo = iter(range(tasks))

    async def worker() -> None:
        nonlocal wrong, checked
        for i in todo:
            data, expected = samples[i % len(samples)] if samples else (json.dumps({"x": i}), None)
            request = vdag_pb2.vDAGInferencePacket(session_id=f"traffic-{i % 64}", seq_no=i,
                                                   data=data, ts=time.time())  # fmt: skip
            t0 = time.perf_counter()
            try:
                reply = await call(request.SerializeToString(), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                key = f"{exc.code().name}: {(exc.details() or '')[:80]}"
                errors[key] = errors.get(key, 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            if expected is not None:
                checked += 1
                try:
                    answer = json.loads(vdag_pb2.vDAGInferencePacket.FromString(reply).data)
                    ok = all(answer.get(k) == v for k, v in expected.items())
                except (ValueError, AttributeError):
                    ok = False
                wrong += not ok

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, tasks)))))
    finally:
        await channel.close()
    elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {"tasks": tasks, "completed": len(latencies), "errors": errors, "wrong": wrong,
            "checked": checked, "agreement": (checked - wrong) / checked if checked else 1.0,
            "tasks_per_s": len(latencies) / elapsed if elapsed else 0.0,
            "p50_s": pct(0.5), "p99_s": pct(0.99)}  # fmt: skip


def _block_docs(paths: list[str]) -> list[tuple[BlockDoc, dict]]:
    from .block_up import load_block_doc

    return [load_block_doc(p) for p in paths]


async def up(path: str, blocks: list[str], *, vdags: list[str] | None = None,
             ports: str = "default", traffic: int = 0, once: bool = False,
             as_json: bool = False, auth_file: str | None = None,
             tls: TLS | None = None, registry: str | None = None) -> int:  # fmt: skip
    """Start the blocks and the controller of a vDAG here; serve until a signal (or
    until ``--traffic`` ran, with ``once``). Its exit status."""
    if ports not in ("default", "auto"):
        raise AiosFastError(f"--ports must be 'default' or 'auto', not {ports!r}")
    doc = load(path)
    lines = problems(doc)
    if lines:
        raise VDagError(lines[0], lines)
    docs = _block_docs(blocks)
    subs = load_vdags(vdags or [])
    raw_blocks = [document for _, document in docs]
    compile_vdag(load(path), raw_blocks, subs)  # every problem before anything starts
    samples, floor = _samples(doc) if traffic else (None, 1.0)
    tls = tls or TLS()
    running: list[LocalBlock] = []
    controller: subprocess.Popen | None = None
    compiled_file = ""
    stop = runtime.signal_event()
    status = 0
    try:
        for block_doc, document in docs:
            if ports == "auto":
                use_free_ports(block_doc)
            block = LocalBlock(block_doc, document, auth_file=auth_file, tls=tls)
            running.append(block)
            await block.start()
        endpoints = {b.doc.id: b.info["grpc"] for b in running}
        compile_vdag(doc, raw_blocks, subs, endpoints)
        fd, compiled_file = tempfile.mkstemp(prefix="aios-vdag-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.json.encode(doc))
        cports = {"grpc": 0, "http": 0} if ports == "auto" else CONTROLLER_PORTS
        args = [sys.executable, "-m", "aios_fast.vdag.controller", compiled_file,
                "--port", str(cports["grpc"]), "--http-port", str(cports["http"])]  # fmt: skip
        if auth_file:
            args += ["--auth-file", auth_file]
        if registry:
            args += ["--registry", registry]
        for flag, value in (("--tls-cert", tls.cert), ("--tls-key", tls.key),
                            ("--tls-ca", tls.ca)):  # fmt: skip
            if value:
                args += [flag, value]
        controller = subprocess.Popen(args, stdout=subprocess.PIPE, text=True,
                                      env=runtime.child_env(dict(os.environ)),
                                      start_new_session=True)  # fmt: skip
        assert controller.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, controller.stdout.readline)
        if not line:
            raise AiosFastError(f"the vDAG controller failed to start (exit status "
                                f"{controller.wait()}; its error is above)")  # fmt: skip
        cinfo = json.loads(line)
        scheme = tls.scheme
        info: dict[str, Any] = {
            "vdag": doc.uri,
            "controller": f"127.0.0.1:{cinfo['port']}",
            "controller_mgmt": f"{scheme}://127.0.0.1:{cinfo['http_port']}/mgmt",
            "controller_metrics": f"{scheme}://127.0.0.1:{cinfo['http_port']}/metrics",
            "nodes": {label: {"block": n.block_id, "grpc": n.endpoint}
                      for label, n in compile_vdag(doc, raw_blocks, subs, endpoints).nodes.items()},
            "blocks": {b.doc.id: b.info for b in running},
        }  # fmt: skip
        if as_json:
            print(json.dumps(info), flush=True)
        else:
            print(f"vDAG {doc.uri} is up: controller {info['controller']} "
                  f"(mgmt {info['controller_mgmt']})")  # fmt: skip
            for label, n in info["nodes"].items():
                print(f"  node {label}: block {n['block']} at {n['grpc']}")
            sys.stdout.flush()
        if traffic:
            what = f"{len(samples)} samples" if samples else "generated tasks"
            print(f"sending {traffic:,} tasks ({what}) through {info['controller']} ...",
                  flush=True)  # fmt: skip
            summary = await drive_vdag(info["controller"], traffic, samples=samples, tls=tls)
            print(json.dumps(summary) if as_json else _format(summary), flush=True)
            ok = summary["completed"] == traffic and not summary["errors"]
            if summary["checked"] and summary["agreement"] < floor:
                print(f"agreement {summary['agreement']:.3f} is below "
                      f"trafficMinAgreement {floor:g}", flush=True)  # fmt: skip
                ok = False
            status = 0 if ok else 1
        if not once:
            print("serving; Ctrl-C stops the vDAG", flush=True)
            await stop.wait()
    finally:
        if controller is not None and controller.poll() is None:
            controller.terminate()
            await asyncio.get_running_loop().run_in_executor(None, controller.wait)
        for block in reversed(running):
            await block.stop()
        if compiled_file:
            os.unlink(compiled_file)
    return status


def _format(summary: dict) -> str:
    text = (f"{summary['completed']:,}/{summary['tasks']:,} completed, "
            f"{summary['tasks_per_s']:,.0f} tasks/s, p50 {summary['p50_s'] * 1e3:.2f} ms, "
            f"p99 {summary['p99_s'] * 1e3:.2f} ms")  # fmt: skip
    if summary["checked"]:
        text += f", agreement {summary['agreement']:.3f} over {summary['checked']:,} checked"
    for error, count in summary["errors"].items():
        text += f"\n  {count:,} x {error}"
    return text


# ---------------------------------------------------------------------- manifests


def manifests(
    path: str,
    blocks: list[str],
    vdags: list[str] | None = None,
    *,
    image: str = "aios-fast:latest",
    namespace: str = "default",
) -> list[dict]:
    """The vDAG's blocks' and controller's Kubernetes objects, in the order to apply."""
    from . import manifests as block_manifests

    doc = load(path)
    lines = problems(doc)
    if lines:
        raise VDagError(lines[0], lines)
    docs = _block_docs(blocks)
    objects: list[dict] = []
    endpoints = {}
    for block_doc, document in docs:
        objects += block_manifests.manifests(block_doc, document, image=image,
                                             namespace=namespace)  # fmt: skip
        names = block_manifests.block_names(block_doc.id)
        endpoints[block_doc.id] = (f"{names.executor}.{namespace}.svc:"
                                   f"{block_doc.initSettings.ports.grpc}")  # fmt: skip
    compile_vdag(doc, [d for _, d in docs], load_vdags(vdags or []), endpoints)
    base = block_manifests.block_names(f"vdag-{doc.vdagName}").base
    labels = {"app.kubernetes.io/name": "aios-fast", "app.kubernetes.io/instance": base,
              "app.kubernetes.io/component": "vdag-controller"}  # fmt: skip
    meta = {"namespace": namespace, "labels": labels}
    grpc_port, http_port = CONTROLLER_PORTS["grpc"], CONTROLLER_PORTS["http"]
    service = f"{base}-controller"
    container = {
        "name": "controller",
        "image": image,
        "command": ["python", "-m", "aios_fast.vdag.controller", "/etc/aios-fast/vdag.json",
                    "--host", "0.0.0.0", "--port", str(grpc_port), "--http-port", str(http_port),
                    "--advertise", f"{service}.{namespace}.svc"],
        "ports": [{"name": "grpc", "containerPort": grpc_port},
                  {"name": "http", "containerPort": http_port}],
        "env": [{"name": "AIOS_FAST_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": f"{base}-tokens", "key": "token"}}},
                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 3},
        "volumeMounts": [{"name": "vdag", "mountPath": "/etc/aios-fast", "readOnly": True}],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
    }  # fmt: skip
    objects += [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"{base}-vdag", **meta},
         "data": {"vdag.json": json.dumps(msgspec.to_builtins(doc), indent=2, sort_keys=True)}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": service, **meta},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "automountServiceAccountToken": False,
                      "containers": [container],
                      "volumes": [{"name": "vdag", "configMap": {"name": f"{base}-vdag"}}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": service, **meta, "annotations": {
             "prometheus.io/scrape": "true", "prometheus.io/port": str(http_port),
             "prometheus.io/path": "/metrics"}},
         "spec": {"selector": labels, "ports": [
             {"name": "grpc", "port": grpc_port, "targetPort": "grpc", "protocol": "TCP"},
             {"name": "http", "port": http_port, "targetPort": "http", "protocol": "TCP"}]}},
    ]  # fmt: skip
    return objects
