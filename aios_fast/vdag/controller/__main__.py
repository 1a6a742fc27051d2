"""``python -m aios_fast.vdag.controller COMPILED.json``: serve one compiled vDAG (a
document whose ``compiled_graph_data.plan`` is set, as ``aios-fast vdag check --blocks
... --json`` prints it); prints one JSON line with its ports once it serves.

``controller.initSettings`` of the document: ``maxOutputWaitTimeSeconds`` (default 30:
the longest a task may take), ``quota`` ({rate, burst, sessionRate, sessionBurst,
maxSessions}, see ``server``), ``healthCheckIntervalSeconds`` / ``TimeoutSeconds``
(``checks``); ``controller.policies``: ``quotaChecker``, ``healthChecker``,
``qualityChecker``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import msgspec

from ...auth import Auth
from ...errors import AiosFastError
from ...policy import PolicyRule
from ...service import runtime
from ...tls import TLS, add_tls_arguments
from ..compile import Plan
from .checks import HealthCheck, QualityCheck
from .registration import ControllerRegistration
from .server import QuotaSettings, VDagController


class _ControllerSettings(msgspec.Struct):
    maxOutputWaitTimeSeconds: float = 30.0
    healthCheckIntervalSeconds: float = 10.0
    healthCheckTimeoutSeconds: float = 2.0
    quota: QuotaSettings = msgspec.field(default_factory=QuotaSettings)


def load_compiled(path: str) -> tuple[dict, Plan, _ControllerSettings]:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise AiosFastError(f"cannot read the compiled vDAG {path}: {exc}") from None
    plan_data = ((doc.get("compiled_graph_data") or {}) if isinstance(doc, dict) else {}).get(
        "plan"
    )
    if plan_data is None:
        raise AiosFastError(f"{path}: no compiled_graph_data.plan (compile it first: "
                            "aios-fast vdag check --blocks ... --json)")  # fmt: skip
    plan = Plan.from_dict(plan_data)
    init = (doc.get("controller") or {}).get("initSettings") or {}
    keys = (
        "maxOutputWaitTimeSeconds",
        "quota",
        "healthCheckIntervalSeconds",
        "healthCheckTimeoutSeconds",
    )
    try:
        settings = msgspec.convert({k: init[k] for k in keys if k in init}, _ControllerSettings)
    except msgspec.ValidationError as exc:
        raise AiosFastError(f"{path}: controller.initSettings: {exc}") from None
    return doc, plan, settings


def controller_policy(doc: dict, name: str) -> PolicyRule | None:
    """``controller.policies[name]`` (or a list entry with that ``name``)."""
    policies = (doc.get("controller") or {}).get("policies") or {}
    if isinstance(policies, list):
        policies = {p.get("name"): p for p in policies if isinstance(p, dict)}
    rule = policies.get(name) if isinstance(policies, dict) else None
    if not rule:
        return None
    return PolicyRule(rule.get("policyRuleURI", ""), parameters=rule.get("parameters") or {},
                      settings=rule.get("settings") or {})  # fmt: skip


async def _serve(opts) -> None:
    doc, plan, settings = load_compiled(opts.document)
    tls = TLS.from_options(opts)
    health = HealthCheck(plan, controller_policy(doc, "healthChecker"),
                         interval=settings.healthCheckIntervalSeconds,
                         timeout=settings.healthCheckTimeoutSeconds, tls=tls)  # fmt: skip
    quality_policy = controller_policy(doc, "qualityChecker")
    try:
        quality = QualityCheck(quality_policy) if quality_policy is not None else None
    except ValueError as exc:
        raise AiosFastError(f"{opts.document}: controller.policies.{exc}") from None
    controller = VDagController(
        plan, host=opts.host, port=opts.port, http_port=opts.http_port,
        max_wait=settings.maxOutputWaitTimeSeconds, quota=settings.quota,
        auth=Auth.from_env(opts.auth_file), insecure=opts.insecure,
        tls=tls, advertise=opts.advertise, quota_policy=controller_policy(doc, "quotaChecker"),
        health=health, quality=quality, front=opts.front,
    )  # fmt: skip
    await controller.start()
    registration = None
    if opts.registry:
        public = f"{opts.advertise or opts.host}:{controller.port}"
        registration = ControllerRegistration(
            opts.registry, doc, opts.controller_id or f"{plan.vdag_uri}@{public}", public,
            opts.cluster_id, os.environ.get("AIOS_REGISTRY_TOKEN"),
        )  # fmt: skip
        try:
            await registration.register()
        except BaseException:
            await controller.stop()
            raise
    runtime.reload_on_sighup(controller.auth)
    runtime.announce({"port": controller.port, "http_port": controller.http_port,
                      "vdag_uri": plan.vdag_uri})  # fmt: skip
    await runtime.until_signalled()
    if registration is not None:
        try:
            await registration.leave()  # first: callers stop finding it
        except AiosFastError as exc:
            logging.getLogger("aios_fast.vdag.controller").error("%s", exc)
    await controller.stop()


def main(argv=None) -> int:
    runtime.adopt_parent_death()
    parser = argparse.ArgumentParser(
        prog="python -m aios_fast.vdag.controller", description="Serve one compiled vDAG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    parser.add_argument("document", help="compiled vDAG document (JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="gRPC port (0: any free one)")
    parser.add_argument("--http-port", type=int, default=0, help="/metrics, /mgmt, /health")
    parser.add_argument("--front", choices=("auto", "native", "grpcio"), default="auto",
                        help="the gateway's gRPC server: the native front where built "
                             "(auto), or grpcio")  # fmt: skip
    parser.add_argument("--advertise", help="host the blocks reach this controller at")
    parser.add_argument("--auth-file", help="tokens, one 'role token' a line")
    parser.add_argument("--registry", help="registry URL: store the vDAG and register the "
                        "controller there (token: AIOS_REGISTRY_TOKEN)")  # fmt: skip
    parser.add_argument("--controller-id", help="default: <vdagURI>@<host:port>")
    parser.add_argument("--cluster-id", default="", help="the cluster it runs in")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback bind without a token")  # fmt: skip
    add_tls_arguments(parser)
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        runtime.run(_serve(opts))
    except (AiosFastError, OSError) as exc:
        print(f"vdag controller: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
