"""User policies (AIOSv1PolicyRule): loading, settings, the seeds' sample, fallbacks."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from aios_fast import codec, lb
from aios_fast.errors import LBConfigError, NoInstanceError, PolicyLoadError
from aios_fast.policy import PolicyRule, load_policy_class

HERE = Path(__file__).parent
SEED_SAMPLE = HERE / "policies" / "seed_lb_sample"
IDS = ["instance-0", "instance-1", "instance-2"]


def packet(session_id: str):
    return codec.decode_message(codec.encode_message(codec.Packet(session_id=session_id)))


def test_load_from_directory_file_and_module():
    assert load_policy_class(str(SEED_SAMPLE)).__name__ == "AIOsv1PolicyRule"
    assert load_policy_class(str(SEED_SAMPLE / "function.py")).__name__ == "AIOsv1PolicyRule"
    assert load_policy_class(f"file:{SEED_SAMPLE}").__name__ == "AIOsv1PolicyRule"
    cls = load_policy_class("tests.policies.sticky_module")
    assert cls.__name__ == "AIOSv1PolicyRule"
    assert load_policy_class("tests.policies.sticky_module:Misbehaving").__name__ == "Misbehaving"


def test_load_name_version_from_policy_path(tmp_path, monkeypatch):
    target = tmp_path / "policies" / "load_balancer" / "sample" / "v0.0.1-beta"
    target.mkdir(parents=True)
    shutil.copy(SEED_SAMPLE / "function.py", target / "function.py")
    monkeypatch.setenv("AIOS_POLICY_PATH", str(tmp_path))
    cls = load_policy_class("policies.load_balancer.sample:v0.0.1-beta")
    assert cls.__name__ == "AIOsv1PolicyRule"
    with pytest.raises(PolicyLoadError, match="AIOS_POLICY_PATH"):
        load_policy_class("policies.load_balancer.sample:v9")
    unversioned = tmp_path / "policies" / "plain"
    unversioned.mkdir(parents=True)
    shutil.copy(SEED_SAMPLE / "function.py", unversioned / "function.py")
    assert load_policy_class("policies.plain:latest").__name__ == "AIOsv1PolicyRule"


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("", "non-empty"),
        ("/no/such/policy.py", "no such file"),
        ("no_such_module_xyz", "cannot import"),
        ("tests.policies.sticky_module:Nope", "defines none"),
        ("tests.policies", "defines none"),
    ],
)
def test_load_errors_are_clear(uri, match):
    with pytest.raises(PolicyLoadError, match=match):
        load_policy_class(uri)


def test_policy_file_that_fails_to_import(tmp_path):
    bad = tmp_path / "function.py"
    bad.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(PolicyLoadError, match="boom at import"):
        load_policy_class(str(tmp_path))


def test_constructor_failure_is_a_load_error():
    with pytest.raises(PolicyLoadError, match="cannot start"):
        PolicyRule("tests.policies.sticky_module:Broken")


def test_settings_parameters_and_context():
    seen = []
    rule = PolicyRule(
        "tests.policies.sticky_module",
        "rule-1",
        parameters={"prefer": "instance-2"},
        settings={"extra": 1},
        get_metrics=lambda: seen.append(1) or {"block_metrics": {}, "cluster_metrics": {}},
        block_data={"id": "block-1"},
        cluster_data={"id": "cluster-1"},
    )
    # Block values override the policy's defaults, not the other way round.
    assert rule.parameters == {"prefer": "instance-2", "tag": "default"}
    assert rule.settings["mode_name"] == "sticky" and rule.settings["extra"] == 1
    assert rule.settings["block_data"] == {"id": "block-1"}
    assert rule.settings["cluster_data"] == {"id": "cluster-1"}
    data = {"mode": "load_balance", "packet": packet("s"), "instances": IDS}
    assert rule.eval(data) == {"instance_id": "instance-2"}
    rule.eval(data)
    assert rule.context == {"calls": 2}  # the context dict persists between calls
    assert seen == [1, 1]
    assert rule.management("get_params", {})["data"]["prefer"] == "instance-2"


def test_seed_sample_policy_runs_unchanged():
    block = {
        "id": "block-1",
        "policies": {"loadBalancer": {"policyRuleURI": str(SEED_SAMPLE), "parameters": {}}},
    }
    balancer = lb.make_balancer(block, IDS, cluster_data={"id": "c1"})
    assert isinstance(balancer, lb.PolicyBalancer)
    assert balancer.rule.settings["block_data"]["id"] == "block-1"
    picks = Counter(balancer.pick(packet(f"s{i % 50}")) for i in range(600))
    assert set(picks) <= set(IDS) and len(picks) == 3
    assert balancer.fallbacks == 0 and balancer.policy_picks == 600
    assert balancer.management("anything", {}) is None  # the sample's management() passes


def test_user_policy_sees_live_instance_set():
    balancer = lb.make_balancer(
        {"policyRuleURI": "tests.policies.sticky_module", "parameters": {"prefer": "late"}}, IDS
    )
    assert balancer.pick(packet("abc")) in IDS
    balancer.add("late")
    assert balancer.pick(packet("abc")) == "late"
    balancer.set_healthy("late", False)
    assert balancer.pick(packet("abc")) != "late"
    assert "late" in balancer and len(balancer) == 4


@pytest.mark.parametrize(
    "answer",
    ["raise", None, "garbage", {"instance_id": "not-an-instance"}, {"other": 1}, [1, 2]],
)
def test_bad_policy_answers_fall_back_and_are_counted(answer, caplog):
    balancer = lb.make_balancer(
        {
            "policyRuleURI": "tests.policies.sticky_module:Misbehaving",
            "parameters": {"answer": answer},
            "settings": {"fallbackPolicy": "round_robin"},
        },
        IDS,
    )
    with caplog.at_level(logging.ERROR, logger="aios_fast.lb"):
        picks = [balancer.pick(packet("s")) for _ in range(6)]
    assert picks == IDS * 2  # the round_robin fallback answered every task
    assert balancer.fallbacks == 6 and balancer.policy_picks == 0
    errors = [r for r in caplog.records if r.name == "aios_fast.lb"]
    assert len(errors) == 1  # rate limited: one report, not one per task
    assert "Misbehaving" in errors[0].getMessage() and balancer.last_error


def test_fallback_policy_is_configurable():
    balancer = lb.make_balancer(
        {
            "policyRuleURI": "tests.policies.sticky_module:Misbehaving",
            "parameters": {"answer": "raise"},
            "settings": {"fallbackPolicy": "consistent_hash"},
        },
        IDS,
    )
    assert balancer.fallback.name == "consistent_hash"
    assert balancer.pick(packet("sess-1")) == balancer.fallback.pick_key("sess-1")


def test_user_policy_with_no_instances():
    balancer = lb.make_balancer({"policyRuleURI": str(SEED_SAMPLE)}, [])
    with pytest.raises(NoInstanceError):
        balancer.pick(packet("s"))


def test_make_balancer_builtins():
    assert lb.make_balancer(None, IDS).name == "round_robin"
    b = lb.make_balancer(
        {"policyRuleURI": "builtin:consistent_hash", "parameters": {"vnodes": 50}}, IDS
    )
    assert b.name == "consistent_hash"
    assert lb.builtin("p2c", IDS).name == "power_of_two_choices"
    with pytest.raises(LBConfigError, match="known"):
        lb.make_balancer({"policyRuleURI": "builtin:fastest"}, IDS)
    with pytest.raises(LBConfigError, match="does not take"):
        lb.make_balancer({"policyRuleURI": "builtin:round_robin", "parameters": {"vnode": 1}})
    with pytest.raises(LBConfigError):
        lb.make_balancer({"policyRuleURI": "builtin:random", "parameters": [1]})
