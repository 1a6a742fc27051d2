"""Documents from the seeds (registries.txt, cluster-registry.txt), as the examples give
them (the cluster example's misplaced "reputation" moved to the top level)."""

import copy

CLUSTER = {
    "id": "cluster-west-vision-001",
    "regionId": "us-west-2",
    "status": "live",
    "nodes": {
        "count": 2,
        "nodeData": [
            {
                "id": "node-1",
                "gpus": {
                    "count": 2,
                    "memory": 32768,
                    "gpus": [{"modelName": "NVIDIA A100", "memory": 16384},
                             {"modelName": "NVIDIA A100", "memory": 16384}],
                    "features": ["fp16", "tensor_cores"],
                    "modelName": ["NVIDIA A100"],
                },
                "vcpus": {"count": 32},
                "memory": 131072,
                "swap": 8192,
                "storage": {"disks": 2, "size": 1048576},
                "network": {"interfaces": 2, "txBandwidth": 10000, "rxBandwidth": 10000},
            },
            {
                "id": "node-2",
                "gpus": {
                    "count": 1,
                    "memory": 16384,
                    "gpus": [{"modelName": "NVIDIA V100", "memory": 16384}],
                    "features": ["fp16"],
                    "modelName": ["NVIDIA V100"],
                },
                "vcpus": {"count": 16},
                "memory": 65536,
                "swap": 4096,
                "storage": {"disks": 1, "size": 524288},
                "network": {"interfaces": 1, "txBandwidth": 5000, "rxBandwidth": 5000},
            },
        ],
    },
    "gpus": {"count": 3, "memory": 49152},
    "vcpus": {"count": 48},
    "memory": 196608,
    "swap": 12288,
    "storage": {"disks": 3, "size": 1572864},
    "network": {"interfaces": 3, "txBandwidth": 15000, "rxBandwidth": 15000},
    "config": {
        "policyExecutorId": "policy-exec-007",
        "policyExecutionMode": "local",
        "customPolicySystem": {"name": "AdvancedPolicyRunner", "version": "2.1.0"},
        "publicHostname": "cluster-west-vision-001.company.net",
        "useGateway": True,
        "actionsPolicyMap": {"onScaleUp": "evaluate-gpu-availability",
                             "onFailure": "notify-admin"},
        "urlMap": {
            "controllerService": "http://cluster-west-vision-001.company.net:32000/controller",
            "metricsService": "http://cluster-west-vision-001.company.net:32000/metrics",
            "blocksQuery": "http://cluster-west-vision-001.company.net:32000/blocks",
            "publicGateway": "http://cluster-west-vision-001.company.net:32000",
            "parameterUpdater": "http://cluster-west-vision-001.company.net:32000/mgmt",
        },
    },
    "tags": ["gpu", "production", "ml", "vision", "us-west"],
    "clusterMetadata": {
        "name": "Sample cluster",
        "description": "Dedicated to serving large-scale computer vision models in production.",
        "owner": "AI Infrastructure Team",
        "email": "ai-infra@company.net",
        "countries": ["USA", "Canada"],
        "miscContactInfo": {"pagerDuty": "https://sample-website/ai-clusters",
                            "slack": "#ml-infra"},
        "additionalInfo": {},
    },
    "reputation": 94,
}  # fmt: skip


def _policy(uri: str) -> dict:
    return {"policyRuleURI": uri, "parameters": {}, "settings": {}}


BLOCK = {
    "id": "block-object-detector-001",
    "componentUri": "",
    "component": {},
    "blockUri": "",
    "blockMetadata": {},
    "policies": {
        "resourceAllocator": _policy("policies.resource_allocator.standard:latest"),
        "loadBalancer": _policy("policies.load_balancer.gateway.load_balancer_sep2:v0.0.1-beta"),
        "loadBalancerMapper": _policy(
            "policies.load_balancer.mapper.loadbalancer_mapper_oct1:v1.2.0"
        ),
        "assignment": _policy("policies.assignment.default_strategy:v1.0.3"),
        "stabilityChecker": _policy("policies.health.stability_checker:v0.1.0"),
        "autoscaler": _policy("policies.autoscaler.basic_auto_scaler:v0.3.5"),
        "accessRulesPolicy": _policy("policies.access.control.access_rules_policy:v2.0.0"),
    },
    "cluster": {},
    "blockInitData": {},
    "initSettings": {},
    "parameters": {},
    "minInstances": 1,
    "maxInstances": 5,
    "inputProtocol": {},
    "outputProtocol": {},
}

VDAG = {
    "vdagName": "sample-vdag",
    "vdagVersion": {"version": "1.0", "releaseTag": "stable"},
    "discoveryTags": ["vision"],
    "status": "pending",
    "metadata": {"owner": "team-ml"},
    "nodes": [],
    "graph": {},
}

CONTROLLER = {
    "vdag_controller_id": "controller-123",
    "vdag_uri": "sample-vdag:1.0-stable",
    "public_url": "",
    "cluster_id": "cluster-west-1",
    "metadata": {"owner": "team-alpha"},
    "config": {},
    "search_tags": ["vision"],
}


def fresh(doc: dict) -> dict:
    return copy.deepcopy(doc)
