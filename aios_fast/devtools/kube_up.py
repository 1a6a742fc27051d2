"""``aios-fast block up <block.json> --actuator kubernetes``: a block's sidecars against
a cluster (what the manifests' ``<name>-sidecars`` Deployment runs).

The executor and the instances run as the manifests' Deployments; this starts the
health checker and the auto-scaler, both talking to the executor's management API
(``--executor-url``, default ``http://<name>-executor:<ports.mgmt>``, the executor's
Service), the auto-scaler with the Kubernetes actuator (``sidecars.kube_actuator``)
scaling ``<name>-instances`` between the document's minInstances and maxInstances. The
cluster comes from ``--kubeconfig``, else the pod's service account, else $KUBECONFIG or
~/.kube/config.
"""

from __future__ import annotations

import json

from ..auth import Auth
from ..service import runtime
from ..service.runtime import say
from ..sidecars.autoscale import AutoScaler
from ..sidecars.healthcheck import HealthChecker
from ..sidecars.kube_actuator import KubeActuator
from ..tls import TLS
from .block_up import BlockDoc, load_block_doc, start_sidecars, use_free_ports
from .manifests import block_names

__all__ = ["KubeSidecars", "up_kubernetes"]


class KubeSidecars:
    """The health checker and the auto-scaler of one block on Kubernetes."""

    def __init__(self, doc: BlockDoc, document: dict, *, executor_url: str | None = None,
                 namespace: str | None = None, kubeconfig: str | None = None,
                 host: str = "127.0.0.1", auth_file: str | None = None,
                 tls: TLS | None = None, client=None) -> None:  # fmt: skip
        self.doc = doc
        self.document = document
        self.host = host
        self.tls = tls or TLS()
        self.auth = Auth.from_env(auth_file)
        names = block_names(doc.id)
        ports = doc.initSettings.ports
        self.executor_url = executor_url or f"{self.tls.scheme}://{names.executor}:{ports.mgmt}"
        self.actuator = KubeActuator(
            names.instances,
            namespace=namespace,
            kubeconfig=kubeconfig,
            min_replicas=doc.minInstances,
            max_replicas=doc.maxInstances or max(doc.minInstances, 1),
            client=client,
        )
        self.checker: HealthChecker | None = None
        self.scaler: AutoScaler | None = None

    async def start(self) -> dict:
        self.checker, self.scaler = await start_sidecars(
            self.doc,
            self.document,
            self.executor_url,
            self.actuator,
            self.host,
            self.auth,
            self.tls,
        )
        scheme = self.tls.scheme
        return {
            "block": self.doc.id,
            "executor_mgmt": self.executor_url.rstrip("/") + "/mgmt",
            "health_checker_mgmt": f"{scheme}://{self.host}:{self.checker.port}/mgmt",
            "autoscaler_mgmt": f"{scheme}://{self.host}:{self.scaler.port}/mgmt",
            "deployment": self.actuator.deployment,
            "namespace": self.actuator.namespace,
        }

    async def stop(self) -> None:
        for sidecar in (self.scaler, self.checker):
            if sidecar is not None:
                await sidecar.stop()
        await self.actuator.stop_all()


async def up_kubernetes(path: str, *, ports: str = "default", executor_url: str | None = None,
                        namespace: str | None = None, kubeconfig: str | None = None,
                        host: str = "127.0.0.1", as_json: bool = False,
                        auth_file: str | None = None, tls: TLS | None = None) -> int:  # fmt: skip
    doc, document = load_block_doc(path)
    if ports == "auto":
        use_free_ports(doc)
    sidecars = KubeSidecars(doc, document, executor_url=executor_url, namespace=namespace,
                            kubeconfig=kubeconfig, host=host, auth_file=auth_file,
                            tls=tls)  # fmt: skip
    stop = runtime.signal_event()
    try:
        info = await sidecars.start()
        if as_json:
            say(json.dumps(info))
        else:
            say(f"block {doc.id}: sidecars up against Kubernetes")
            for key, value in info.items():
                say(f"  {key.ljust(20)} {value}")
            say("serving; Ctrl-C stops the sidecars (the pods stay)")
        await stop.wait()
    finally:
        await sidecars.stop()
    return 0
