"""``aios-fast block manifests <block.json>``: the Kubernetes objects of one block.

For a block document (the one ``block up`` reads) it writes, as YAML documents:

- a ConfigMap ``<name>-block`` holding the document (mounted at /etc/aios-fast);
- the executor: a Deployment ``<name>-executor`` (``--discover k8s://NS/<name>-instances``:
  its instances are the ready endpoints of the instances' Service) and a Service (gRPC
  50051, management 18001, metrics 18000, with Prometheus scrape annotations);
- the instances: a Deployment ``<name>-instances`` (``minInstances`` replicas; GPU, CPU
  and memory requests and limits from ``initSettings.resources``; a startup probe that
  waits ``initSettings.startupTimeout`` for the Block to load, then readiness and
  liveness probes, all on the instance's ``GET /health``) and a headless Service whose
  EndpointSlices the executor watches;
- the sidecars: a Deployment ``<name>-sidecars`` running ``aios-fast block up
  --actuator kubernetes`` (health checker 19001, auto-scaler 10000);
- a ServiceAccount per role with the least RBAC it needs: the executor lists and
  watches EndpointSlices; the sidecars get the instances' Deployment, get and patch its
  scale, and patch pods (the pod-deletion-cost mark); the instances get no API token.

Every container takes its token from the Secret ``<name>-tokens`` (key ``token``,
created by the operator, never written here) as ``AIOS_FAST_TOKEN``: a service refuses a
non-loopback address without one. ``initSettings.resources`` (all optional):
``gpus`` (per instance; requested and limited as ``gpuResource``, default
``nvidia.com/gpu``), ``cpu``, ``memory`` (Kubernetes quantities, e.g. "2", "4Gi"), and
``requests`` / ``limits`` (any resource by name: they win over the shorthands).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from ..errors import AiosFastError
from ..kube import INSTANCE_PORTS
from ..settings import BlockDocument, effective_document

__all__ = ["BlockNames", "block_names", "manifests", "render"]

IMAGE = "aios-fast:latest"
CONFIG_DIR = "/etc/aios-fast"
STARTUP_PERIOD = 5  # seconds between the startup probes of a loading instance
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


@dataclass(frozen=True)
class BlockNames:
    base: str

    @property
    def executor(self) -> str:
        return f"{self.base}-executor"

    @property
    def instances(self) -> str:
        return f"{self.base}-instances"

    @property
    def sidecars(self) -> str:
        return f"{self.base}-sidecars"

    @property
    def config(self) -> str:
        return f"{self.base}-block"

    @property
    def tokens(self) -> str:
        return f"{self.base}-tokens"


def block_names(block_id: str) -> BlockNames:
    """Kubernetes names from a block id: lowercase, [-a-z0-9], starting with a letter,
    short enough for the longest suffix and the pods' generated names."""
    base = re.sub(r"[^a-z0-9-]+", "-", block_id.lower()).strip("-")[:40].strip("-")
    if not base:
        raise AiosFastError(f"block id {block_id!r} gives no usable Kubernetes name")
    if not base[0].isalpha():
        base = f"b-{base}"[:40].rstrip("-")
    return BlockNames(base)


def _labels(names: BlockNames, component: str) -> dict:
    return {
        "app.kubernetes.io/name": "aios-fast",
        "app.kubernetes.io/instance": names.base,
        "app.kubernetes.io/component": component,
    }


def _meta(name: str, namespace: str, labels: dict, **extra) -> dict:
    return {"name": name, "namespace": namespace, "labels": labels, **extra}


def _token_env(names: BlockNames) -> list[dict]:
    ref = {"name": names.tokens, "key": "token"}
    return [
        {"name": "AIOS_FAST_TOKEN", "valueFrom": {"secretKeyRef": ref}},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def _security() -> dict:
    """What a "restricted" Pod Security namespace demands of every container, and more."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(port: str, **timing) -> dict:
    return {"httpGet": {"path": "/health", "port": port}, **timing}


def _config_volume(names: BlockNames) -> tuple[list[dict], list[dict]]:
    volumes: list[dict] = [
        {"name": "block", "configMap": {"name": names.config}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict] = [
        {"name": "block", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return volumes, mounts


def _deployment(names, namespace, name, component, replicas, pod_spec, annotations=None):
    labels = _labels(names, component)
    template_meta = {"labels": labels}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def _service(names, namespace, name, component, ports: dict, **spec) -> dict:
    labels = _labels(names, component)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace, labels, **spec.pop("meta", {})),
        "spec": {
            "selector": labels,
            "ports": [
                {"name": k, "port": v, "targetPort": k, "protocol": "TCP"} for k, v in ports.items()
            ],
            **spec,
        },
    }


def _rbac(names, namespace, account, component, rules) -> list[dict]:
    labels = _labels(names, component)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(account, namespace, labels),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(account, namespace, labels),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(account, namespace, labels),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def manifests(doc: BlockDocument, document: dict, *, image: str = IMAGE,
              namespace: str = "default") -> list[dict]:  # fmt: skip
    """The block's Kubernetes objects (dicts), in the order to apply them."""
    if not _NAMESPACE.match(namespace):
        raise AiosFastError(f"--namespace {namespace!r} is not a Kubernetes namespace name")
    if not image or any(c.isspace() for c in image):
        raise AiosFastError(f"--image {image!r} is not an image reference")
    names = block_names(doc.id)
    settings = doc.initSettings
    res = settings.resources
    effective = effective_document(doc, document)  # what every container reads
    doc_path = f"{CONFIG_DIR}/block.json"
    volumes, mounts = _config_volume(names)
    ports = settings.ports  # the seeds' defaults: 50051, 18001, 18000, 10000, 19001
    executor_ports = {"grpc": ports.grpc, "mgmt": ports.mgmt, "metrics": ports.metrics}
    if ports.http is not None:  # the HTTP/JSON API (executor.http_front), when asked for
        executor_ports["http"] = ports.http
    sidecar_ports = {"autoscaler": ports.autoscaler, "health": ports.healthChecker}
    objects: list[dict] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(names.config, namespace, _labels(names, "config")),
            "data": {"block.json": json.dumps(effective, indent=2, sort_keys=True)},
        }
    ]
    # the executor: finds its instances in the instances' EndpointSlices
    objects += _rbac(names, namespace, names.executor, "executor", [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
         "verbs": ["list", "watch"]},
    ])  # fmt: skip
    metrics = ports.metrics
    scrape = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics),
        "prometheus.io/path": "/metrics",
    }
    executor = {
        "name": "executor",
        "image": image,
        "command": ["python", "-m", "aios_fast.executor"],
        "args": [
            "--host",
            "0.0.0.0",
            "--http-host",
            "0.0.0.0",
            "--block-doc",  # every setting of the block comes from the document
            doc_path,
            "--discover",
            f"k8s://{namespace}/{names.instances}",
        ],
        "env": _token_env(names),
        "ports": [{"name": k, "containerPort": v} for k, v in executor_ports.items()],
        "readinessProbe": _http_probe("mgmt", periodSeconds=5),
        "livenessProbe": _http_probe("mgmt", periodSeconds=10, failureThreshold=3),
        "volumeMounts": mounts,
        "securityContext": _security(),
    }
    objects.append(_deployment(names, namespace, names.executor, "executor", 1, {
        "serviceAccountName": names.executor,
        "containers": [executor],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 45,
    }, annotations=scrape))  # fmt: skip
    objects.append(_service(names, namespace, names.executor, "executor", executor_ports,
                            meta={"annotations": scrape}))  # fmt: skip
    # the instances: pods of a Deployment the auto-scaler scales
    requests: dict = {}
    limits: dict = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if res.gpus:
        requests[res.gpuResource] = limits[res.gpuResource] = str(res.gpus)
    requests.update(res.requests)
    limits.update(res.limits)
    instance = {
        "name": "instance",
        "image": image,
        "command": ["python", "-m", "aios_fast.instance"],
        "args": [
            "--block-doc",  # the Block, its data and settings: all from the document
            doc_path,
            "--host",
            "0.0.0.0",
            "--port",
            str(INSTANCE_PORTS["grpc"]),
            "--mgmt-port",
            str(INSTANCE_PORTS["mgmt"]),
            "--link-port",
            str(INSTANCE_PORTS["link"]),
        ],
        "env": _token_env(names),
        "ports": [{"name": k, "containerPort": v} for k, v in INSTANCE_PORTS.items()],
        # /health answers 503 "loading" while the Block loads: the startupProbe waits up
        # to startupTimeout for it, and only then do liveness and readiness count
        "startupProbe": _http_probe(
            "mgmt",
            periodSeconds=STARTUP_PERIOD,
            timeoutSeconds=5,
            failureThreshold=max(1, math.ceil(settings.startupTimeout / STARTUP_PERIOD)),
        ),
        "readinessProbe": _http_probe("mgmt", periodSeconds=2, failureThreshold=2),
        "livenessProbe": _http_probe(
            "mgmt", periodSeconds=10, timeoutSeconds=5, failureThreshold=3
        ),
        "volumeMounts": mounts,
        "securityContext": _security(),
    }
    if requests or limits:
        instance["resources"] = {k: v for k, v in (("requests", requests),
                                                   ("limits", limits)) if v}  # fmt: skip
    objects.append(_deployment(names, namespace, names.instances, "instance",
                               doc.minInstances, {
        "automountServiceAccountToken": False,
        "containers": [instance],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 40,  # the instance drains its tasks on SIGTERM
    }))  # fmt: skip
    objects.append(_service(names, namespace, names.instances, "instance", INSTANCE_PORTS,
                            clusterIP="None", publishNotReadyAddresses=False))  # fmt: skip
    # the sidecars: health checker and auto-scaler (the Kubernetes actuator)
    objects += _rbac(names, namespace, names.sidecars, "sidecars", [
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "resourceNames": [names.instances], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"],
         "resourceNames": [names.instances], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
    ])  # fmt: skip
    sidecars = {
        "name": "sidecars",
        "image": image,
        "args": [
            "block",
            "up",
            doc_path,
            "--actuator",
            "kubernetes",
            "--host",
            "0.0.0.0",
            "--namespace",
            namespace,
            "--executor-url",
            f"http://{names.executor}:{ports.mgmt}",
        ],
        "env": _token_env(names),
        "ports": [{"name": k, "containerPort": v} for k, v in sidecar_ports.items()],
        "readinessProbe": _http_probe("autoscaler", periodSeconds=10),
        "livenessProbe": _http_probe("autoscaler", periodSeconds=20),
        "volumeMounts": mounts,
        "securityContext": _security(),
    }
    objects.append(_deployment(names, namespace, names.sidecars, "sidecars", 1, {
        "serviceAccountName": names.sidecars,
        "containers": [sidecars],
        "volumes": volumes,
    }))  # fmt: skip
    return objects


def render(objects: list[dict]) -> str:
    """YAML documents (``---`` between them)."""
    try:
        import yaml
    except ImportError:
        raise AiosFastError("writing YAML needs PyYAML: pip install 'aios-fast[kube]'") from None

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:  # shared label dicts: written out each time
            return True

    def text(dumper, value: str):  # the block document as a readable literal block
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump_all(objects, Dumper=Dumper, sort_keys=False, default_flow_style=False)
