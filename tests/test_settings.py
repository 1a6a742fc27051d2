"""The settings contract (aios_fast.settings): one-line errors, and every setting reaching
every process that uses it, through ``block up`` and through the Kubernetes manifests.

The reach test reads what each process is given (block up's command lines and effective
document; the manifests' container args and ConfigMap) and decodes it with the process's
own parser, as the process does at start: no process is spawned, so it is quick, and it
fails when a caller forgets to hand a setting on (as the manifests did with ``batching``
and ``front`` before the contract)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from aios_fast import settings
from aios_fast.devtools.block_up import LocalBlock
from aios_fast.devtools.manifests import CONFIG_DIR, manifests
from aios_fast.executor import __main__ as executor_main
from aios_fast.instance import __main__ as instance_main
from aios_fast.settings import SettingsError, load_document

# (setting path under initSettings, a value other than the default,
#  {consumer: (what the consumer reads, expected)})
# consumers: "executor" (ExecutorConfig field; "workers": its process count),
# "instance" (the instance's settings), "sidecars" (the document the sidecars decode).
ROWS = [
    ("workers", 3, {"executor": ("workers", 3)}),
    ("front", "grpcio", {"executor": ("front", "grpcio")}),
    ("taskTimeout", 7.5, {"executor": ("task_timeout", 7.5)}),
    ("maxMessageBytes", 9_000_000, {"executor": ("max_message", 9_000_000),
                                    "instance": ("max_message", 9_000_000)}),
    ("outlierDetection.consecutiveFailures", 9, {"executor": ("eject_after", 9)}),
    ("outlierDetection.baseEjectionSeconds", 1.5, {"executor": ("eject_seconds", 1.5)}),
    ("outlierDetection.maxEjectionPercent", 30, {"executor": ("eject_max_percent", 30)}),
    ("ports.grpc", 50061, {"executor": ("port", 50061)}),
    ("ports.mgmt", 18011, {"executor": ("mgmt_port", 18011)}),
    ("ports.metrics", 18010, {"executor": ("metrics_port", 18010)}),
    ("ports.autoscaler", 10010, {"sidecars": ("ports.autoscaler", 10010)}),
    ("ports.healthChecker", 19011, {"sidecars": ("ports.healthChecker", 19011)}),
    ("ports.http", 18012, {"executor": ("http_port", 18012)}),
    ("healthChecker.interval", 2.5, {"sidecars": ("healthChecker.interval", 2.5)}),
    ("healthChecker.timeout", 0.5, {"sidecars": ("healthChecker.timeout", 0.5)}),
    ("healthChecker.unhealthyAfter", 3, {"sidecars": ("healthChecker.unhealthyAfter", 3)}),
    ("healthChecker.healthyAfter", 2, {"sidecars": ("healthChecker.healthyAfter", 2)}),
    ("autoscaler.interval", 4.0, {"sidecars": ("autoscaler.interval", 4.0)}),
    ("autoscaler.drainTimeout", 12.0, {"sidecars": ("autoscaler.drainTimeout", 12.0)}),
    ("batching", {"mode": "delay", "maxBatchSize": 8},
     {"instance": ("batching", {"mode": "delay", "maxBatchSize": 8, "maxQueueDelayMs": 5.0,
                                "preferredBatchSizes": [], "maxConcurrentBatches": 1})}),
    ("executor.maxInflight", 500, {"executor": ("max_inflight", 500)}),
    ("executor.instanceInflight", 50, {"executor": ("instance_inflight", 50)}),
    ("executor.maxRetries", 4, {"executor": ("max_retries", 4)}),
    ("executor.drainTimeout", 11.0, {"executor": ("drain_timeout", 11.0)}),
    ("executor.linkLinger", 0.004, {"executor": ("link_linger", 0.004)}),
    ("executor.linkKeepalive", 3.0, {"executor": ("link_keepalive", 3.0)}),
    ("executor.link", "tcp", {"executor": ("link", "tcp")}),
    ("executor.keepalive", 60.0, {"executor": ("keepalive", 60.0)}),
    ("executor.keepaliveTimeout", 5.0, {"executor": ("keepalive_timeout", 5.0)}),
    ("executor.discoverInterval", 0.5, {"executor": ("discover_interval", 0.5)}),
    ("executor.metricsInterval", 2.0, {"executor": ("metrics_interval", 2.0)}),
    ("executor.connectionBudgetBytes", 32 << 20, {"executor": ("connection_budget", 32 << 20)}),
    ("executor.frontBudgetBytes", 512 << 20, {"executor": ("front_budget", 512 << 20)}),
    ("executor.maxConnections", 900, {"executor": ("max_connections", 900)}),
    ("executor.handshakeTimeout", 30.0, {"executor": ("handshake_timeout", 30.0)}),
    ("instance.maxConcurrency", 17, {"instance": ("max_concurrency", 17)}),
    ("instance.drainTimeout", 9.0, {"instance": ("drain_timeout", 9.0)}),
    ("instance.inlineBudget", 0.0005, {"instance": ("inline_budget", 0.0005)}),
    ("block", "tests.blocks:SleepBlock", {"instance": ("block", "tests.blocks:SleepBlock")}),
]  # fmt: skip
# Settings no process reads from the document: block up's actuator places instances on
# GPUs with them (tests/test_gpu_pinning.py), the manifests turn resources into the pod's
# requests and limits and startupTimeout into its startupProbe (test_manifests_* below).
NOT_PROCESS_SETTINGS = {"gpus", "gpusPerInstance", "instancesPerGpu", "resources.gpus",
                        "resources.gpuResource", "resources.cpu", "resources.memory",
                        "resources.requests", "resources.limits", "startupTimeout"}  # fmt: skip
# The document's own fields the instance reads (the Block's data), besides initSettings.
DOCUMENT_ROWS = [
    ("blockInitData", {"weights": "w.onnx"}, ("init_data", {"weights": "w.onnx"})),
    ("parameters", {"threshold": 0.7}, ("parameters", {"threshold": 0.7})),
    ("id", "digits", ("block_id", "digits")),
]


def _leaves(struct: type, prefix: str = "") -> set[str]:
    out = set()
    for field in msgspec.structs.fields(struct):
        inner = settings._struct_of(field.type)
        path = f"{prefix}{field.name}"
        if inner is not None and field.name != "batching":
            out |= _leaves(inner, f"{path}.")
        else:
            out.add(path)
    return out


def test_the_table_names_every_setting():
    covered = {path for path, _, _ in ROWS} | NOT_PROCESS_SETTINGS
    assert covered == _leaves(settings.InitSettings)


def _document(path: str, value) -> dict:
    document: dict = {"id": "reach", "minInstances": 1, "policies": {}, "initSettings": {}}
    if path in {"blockInitData", "parameters", "id"}:
        document[path] = value
        return document
    node = document["initSettings"]
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return document


def _read(consumer: str, what: str, executor_argv, instance_argv, doc_file):
    if consumer == "executor":
        config, workers = executor_main.config_of(executor_main.build_parser().parse_args(
            executor_argv))  # fmt: skip
        return workers if what == "workers" else getattr(config, what)
    if consumer == "instance":
        opts = instance_main.build_parser().parse_args(instance_argv)
        return instance_main.settings_of(opts)[what]
    doc, _ = settings.read_document(doc_file)  # the sidecars read the document itself
    value = doc.initSettings
    for key in what.split("."):
        value = getattr(value, key)
    return value


def _local(document: dict, tmp_path: Path):
    """What block up gives the executor and the instances (the effective document)."""
    path = tmp_path / "block.json"
    path.write_text(json.dumps(document))
    doc, raw = settings.read_document(str(path))
    block = LocalBlock(doc, raw)
    try:
        executor_argv = block.executor_args()[3:]  # after python -m aios_fast.executor
        block.actuator.block_doc = block._doc_file
        instance_argv = block.actuator.instance_args()[3:]
        doc_file = block._doc_file
        yield executor_argv, instance_argv, doc_file
    finally:
        if block.handoff is not None:
            block.handoff.remove()
        Path(block._doc_file).unlink()


def _kubernetes(document: dict, tmp_path: Path):
    """What the manifests give each container: its args, with the ConfigMap's document
    where the containers mount it."""
    doc = load_document(document)
    objects = manifests(doc, document, namespace="ns")
    [config_map] = [o for o in objects if o["kind"] == "ConfigMap"]
    doc_file = tmp_path / "k8s-block.json"
    doc_file.write_text(config_map["data"]["block.json"])

    def args(component: str) -> list[str]:
        labels = ("metadata", "labels", "app.kubernetes.io/component")
        [deployment] = [o for o in objects if o["kind"] == "Deployment"
                        and o[labels[0]][labels[1]][labels[2]] == component]  # fmt: skip
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        return [str(doc_file) if a == f"{CONFIG_DIR}/block.json" else a for a in container["args"]]

    sidecar_args = args("sidecars")
    assert str(doc_file) in sidecar_args  # the sidecars run block up on the same document
    yield args("executor"), args("instance"), str(doc_file)


@pytest.mark.parametrize("where", ["local", "kubernetes"])
@pytest.mark.parametrize("path,value,reads", ROWS, ids=[row[0] for row in ROWS])
def test_every_setting_reaches_every_process_that_uses_it(where, path, value, reads, tmp_path):
    document = _document(path, value)
    source = _local if where == "local" else _kubernetes
    for executor_argv, instance_argv, doc_file in source(document, tmp_path):
        for consumer, (what, expected) in reads.items():
            got = _read(consumer, what, executor_argv, instance_argv, doc_file)
            assert got == expected, (where, path, consumer, what, got)
        # ... and every consumer not named still sees the default, not a stale copy
        default = _read("sidecars", "workers", executor_argv, instance_argv, doc_file)
        assert default == (value if path == "workers" else 1)


@pytest.mark.parametrize("where", ["local", "kubernetes"])
@pytest.mark.parametrize("path,value,read", DOCUMENT_ROWS, ids=[r[0] for r in DOCUMENT_ROWS])
def test_the_blocks_own_data_reaches_its_instances(where, path, value, read, tmp_path):
    source = _local if where == "local" else _kubernetes
    for executor_argv, instance_argv, doc_file in source(_document(path, value), tmp_path):
        assert _read("instance", read[0], executor_argv, instance_argv, doc_file) == read[1]


def test_flags_override_the_document(tmp_path):
    path = tmp_path / "block.json"
    path.write_text(json.dumps(_document("maxMessageBytes", 9_000_000)))
    opts = executor_main.build_parser().parse_args(
        ["--block-doc", str(path), "--max-message", "2048", "--workers", "2"])  # fmt: skip
    config, workers = executor_main.config_of(opts)
    assert (config.max_message, workers, config.task_timeout) == (2048, 2, 0.0)
    opts = instance_main.build_parser().parse_args(
        ["--block-doc", str(path), "--max-concurrency", "3"])  # fmt: skip
    chosen = instance_main.settings_of(opts)
    assert (chosen["max_message"], chosen["max_concurrency"]) == (9_000_000, 3)


def test_defaults_are_declared_once():
    """The processes' defaults (no document, no flag) are the contract's."""
    config, _ = executor_main.config_of(executor_main.build_parser().parse_args([]))
    contract = settings.InitSettings()
    assert config.max_message == contract.maxMessageBytes
    assert config.link_linger == contract.executor.linkLinger
    assert config.keepalive == contract.executor.keepalive
    assert config.eject_after == contract.outlierDetection.consecutiveFailures
    chosen = instance_main.settings_of(instance_main.build_parser().parse_args([]))
    assert chosen["max_message"] == contract.maxMessageBytes
    assert chosen["max_concurrency"] == contract.instance.maxConcurrency


def test_manifests_resources_from_the_contract():
    doc = load_document(_document("resources", {"gpus": 2, "cpu": "4", "memory": "16Gi"}))
    objects = manifests(doc, msgspec.to_builtins(doc), namespace="ns")
    [inst] = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "reach-instances"
    ]
    [container] = inst["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
        "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"},
    }
    # requests and limits by name, over the shorthands
    doc = load_document(_document("resources", {
        "cpu": "4", "memory": "16Gi", "requests": {"cpu": "2", "ephemeral-storage": "1Gi"},
        "limits": {"cpu": "8", "memory": "20Gi"}}))  # fmt: skip
    assert _instance_container(doc)["resources"] == {
        "requests": {"cpu": "2", "memory": "16Gi", "ephemeral-storage": "1Gi"},
        "limits": {"cpu": "8", "memory": "20Gi"},
    }


def _instance_container(doc) -> dict:
    objects = manifests(doc, msgspec.to_builtins(doc), namespace="ns")
    [inst] = [o for o in objects if o["kind"] == "Deployment"
              and o["metadata"]["name"] == f"{doc.id}-instances"]  # fmt: skip
    [container] = inst["spec"]["template"]["spec"]["containers"]
    return container


def test_manifests_startup_probe_from_the_startup_timeout():
    """A model that loads for minutes is not restarted in a loop: the startupProbe
    waits startupTimeout for /health (503 "loading" meanwhile), liveness only after."""
    container = _instance_container(load_document(_document("startupTimeout", 600)))
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "mgmt"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert "initialDelaySeconds" not in container["livenessProbe"]
    default = _instance_container(load_document(_document("workers", 1)))["startupProbe"]
    assert default["periodSeconds"] * default["failureThreshold"] >= 300


BAD = [
    ({"prots": {}}, "initSettings.prots: unknown setting (did you mean 'ports'?)"),
    ({"ports": {"grcp": 1}}, "initSettings.ports.grcp: unknown setting (did you mean 'grpc'?)"),
    ({"executor": {"maxInflite": 1}},
     "initSettings.executor.maxInflite: unknown setting (did you mean 'maxInflight'?)"),
    ({"zzz": 1}, "initSettings.zzz: unknown setting"),
    ({"workers": 0}, "initSettings.workers: expected int >= 1, not 0"),
    ({"workers": "2"}, "initSettings.workers: expected int, got str"),
    ({"front": "fast"}, "initSettings.front: expected one of auto, native, grpcio, not \"fast\""),
    ({"maxMessageBytes": 1023}, "initSettings.maxMessageBytes: expected int >= 1024, not 1023"),
    ({"ports": {"grpc": 65536}}, "initSettings.ports.grpc: expected int <= 65535, not 65536"),
    ({"ports": {"grpc": 65535}}, None),  # exactly at the limit
    ({"maxMessageBytes": 1024}, None),
    ({"outlierDetection": {"maxEjectionPercent": 101}},
     "initSettings.outlierDetection.maxEjectionPercent: expected int <= 100, not 101"),
    ({"resources": {"memory": "lots"}},
     "initSettings.resources.memory: expected a Kubernetes quantity"),
    ({"startupTimeout": 0}, "initSettings.startupTimeout: expected float > 0.0, not 0"),
    ({"block": "nocolon"}, "initSettings: block must be 'module:Class', not 'nocolon'"),
    ({"batching": {"maxBatchSize": 4097}},
     "initSettings.batching.maxBatchSize: expected int <= 4096, not 4097"),
    ({"batching": {"maxBatchSize": 8, "preferredBatchSizes": [16]}},
     "preferredBatchSizes must each be <= maxBatchSize 8"),
    ({"executor": {"keepaliveTimeout": 0}},
     "initSettings.executor.keepaliveTimeout: expected float > 0.0, not 0"),
]  # fmt: skip


@pytest.mark.parametrize("init,message", BAD, ids=[str(i) for i, _ in BAD])
def test_one_line_errors_name_the_setting(init, message):
    document = {"id": "b", "initSettings": init}
    if message is None:
        load_document(document)
        return
    with pytest.raises(SettingsError) as info:
        load_document(document)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_document_level_errors():
    for raw, message in (([], "a block document is a JSON object"),
                         ({}, "missing required field 'id'"),
                         ({"id": "b", "minInstances": 3, "maxInstances": 2}, "minInstances"),
                         ({"id": "b", "minInstances": -1},
                          "minInstances: expected int >= 0")):  # fmt: skip
        with pytest.raises(SettingsError, match=None) as info:
            load_document(raw)
        assert message in str(info.value), str(info.value)
    # fields the data plane does not read are kept, not refused (the seeds' schema)
    assert load_document({"id": "b", "blockMetadata": {"x": 1}}).id == "b"
