"""Built-in load-balancing policies, run against both twins (ids c / py)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aios_fast import codec
from aios_fast.errors import LBConfigError, NoInstanceError, UnknownInstanceError

from .conftest import twins

IDS4 = [f"instance-{i}" for i in range(4)]
POLICIES = [
    "round_robin",
    "weighted_round_robin",
    "random",
    "least_outstanding",
    "power_of_two_choices",
    "consistent_hash",
]


def test_every_builtin_is_registered(lbmod):
    assert sorted(lbmod.BUILTINS) == sorted(POLICIES)


@pytest.mark.parametrize("name", POLICIES)
def test_empty_and_unavailable_sets_raise_no_instance(lbmod, name):
    b = lbmod.BUILTINS[name]([], seed=1)
    with pytest.raises(NoInstanceError):
        b.pick_key("s")
    b.add("a")
    b.add("b")
    assert b.pick_key("s") in {"a", "b"}
    b.set_healthy("a", False)
    b.set_draining("b", True)
    assert b.available() == []
    with pytest.raises(NoInstanceError):
        b.pick_key("s")
    b.set_draining("b", False)
    assert {b.pick_key(f"s{i}") for i in range(50)} == {"b"}


@pytest.mark.parametrize("name", POLICIES)
def test_picks_only_available_instances_while_the_set_changes(lbmod, name):
    b = lbmod.BUILTINS[name](IDS4, seed=3)
    b.set_healthy("instance-1", False)
    b.set_draining("instance-2", True)
    b.set_weight("instance-3", 0)
    assert b.available() == ["instance-0"]
    assert {b.pick_key(f"s{i}") for i in range(100)} == {"instance-0"}
    b.add("instance-9")
    b.remove("instance-0")
    assert {b.pick_key(f"s{i}") for i in range(100)} == {"instance-9"}
    assert b.instances() == ["instance-1", "instance-2", "instance-3", "instance-9"]


def test_round_robin_is_exactly_fair(lbmod):
    b = lbmod.RoundRobin(IDS4)
    assert [b.pick() for _ in range(8)] == IDS4 * 2
    counts = Counter(b.pick() for _ in range(1000))
    assert set(counts.values()) == {250}


def test_weighted_round_robin_is_proportional_and_smooth(lbmod):
    weights = {"a": 1, "b": 2, "c": 3, "d": 4}
    b = lbmod.WeightedRoundRobin(list(weights), weights=weights)
    picks = [b.pick() for _ in range(10 * 100)]
    counts = Counter(picks)
    for iid, w in weights.items():
        assert abs(counts[iid] - 100 * w) <= 1
    # Smooth: in every window of one period (10 picks) each instance gets its weight, +-1.
    for start in range(0, len(picks) - 10):
        window = Counter(picks[start : start + 10])
        for iid, w in weights.items():
            assert abs(window[iid] - w) <= 1, (start, window)
    heavy = lbmod.WeightedRoundRobin(IDS4, weights={"instance-0": 3})
    seq = [heavy.pick() for _ in range(600)]
    longest = max(len(list(g)) for _, g in itertools.groupby(seq))
    assert longest <= 2  # interleaved, never a burst of all three
    assert Counter(seq)["instance-0"] == 300


def test_weighted_round_robin_fractional_weights(lbmod):
    b = lbmod.WeightedRoundRobin(["x", "y"], weights={"x": 0.5, "y": 1.5})
    counts = Counter(b.pick() for _ in range(4000))
    assert abs(counts["x"] - 1000) <= 1


def test_random_is_roughly_uniform_and_seeded(lbmod):
    b = lbmod.Random(IDS4, seed=42)
    counts = Counter(b.pick() for _ in range(40000))
    assert all(9000 < c < 11000 for c in counts.values())
    a1 = lbmod.Random(IDS4, seed=7)
    a2 = lbmod.Random(IDS4, seed=7)
    assert [a1.pick() for _ in range(50)] == [a2.pick() for _ in range(50)]


def test_least_outstanding_follows_in_flight_counts(lbmod):
    b = lbmod.LeastOutstanding(IDS4)
    for iid, n in zip(IDS4, [3, 1, 2, 1], strict=True):
        for _ in range(n):
            assert b.on_dispatch(iid)
    # instance-1 and instance-3 tie at 1: the least recently dispatched (instance-1) wins
    assert b.pick() == "instance-1"
    assert b.on_finish("instance-0") and b.on_finish("instance-0") and b.on_finish("instance-0")
    assert b.pick() == "instance-0"
    assert b.outstanding("instance-0") == 0
    assert not b.on_finish("instance-0")  # never below zero
    assert not b.on_dispatch("nope") and not b.on_finish("nope")
    # As a dispatcher: pick + on_dispatch spreads evenly.
    fresh = lbmod.LeastOutstanding(IDS4)
    for _ in range(40):
        fresh.on_dispatch(fresh.pick())
    assert [fresh.outstanding(i) for i in IDS4] == [10, 10, 10, 10]


def test_power_of_two_choices_prefers_idle_instances(lbmod):
    ids = [f"i{k}" for k in range(10)]
    b = lbmod.PowerOfTwoChoices(ids, seed=5)
    busy = ids[:5]
    for iid in busy:
        for _ in range(100):
            b.on_dispatch(iid)
    b.on_dispatch("i0")  # i0 is the single busiest: P2C never picks it
    picks = Counter(b.pick() for _ in range(20000))
    idle_share = sum(picks[i] for i in ids[5:]) / 20000
    assert idle_share > 0.74  # uniform would be 0.5; P2C gives 1 - (5/10 * 4/9) = 0.78
    assert picks["i0"] == 0


@pytest.mark.parametrize("n", [10, 100])
def test_consistent_hash_moves_about_one_nth(lbmod, n):
    ids = [f"pod-{k}" for k in range(n)]
    keys = [f"session-{k}" for k in range(20000)]
    b = lbmod.ConsistentHash(ids)
    before = {k: b.pick_key(k) for k in keys}
    assert len(set(before.values())) == n
    b.remove("pod-3")
    after = {k: b.pick_key(k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert len(moved) <= 2 * len(keys) / n
    assert all(before[k] == "pod-3" for k in moved)  # only the removed instance's sessions
    b.add("pod-new")
    again = {k: b.pick_key(k) for k in keys}
    moved = [k for k in keys if after[k] != again[k]]
    assert len(moved) <= 2 * len(keys) / n
    assert all(again[k] == "pod-new" for k in moved)
    share = max(Counter(again.values()).values()) / len(keys)
    assert share < 2.0 / n  # no instance owns twice its fair share


def test_consistent_hash_is_sticky_and_process_independent(lbmod):
    a = lbmod.ConsistentHash(IDS4)
    b = lbmod.ConsistentHash(list(reversed(IDS4)))  # another process, another order
    for k in range(500):
        key = f"s-{k}"
        assert a.pick_key(key) == a.pick_key(key) == b.pick_key(key)
    unhealthy = a.pick_key("s-1")
    a.set_healthy(unhealthy, False)
    assert a.pick_key("s-1") != unhealthy
    a.set_healthy(unhealthy, True)
    assert a.pick_key("s-1") == unhealthy  # back when healthy again


def test_consistent_hash_reads_the_packet_session(lbmod):
    b = lbmod.ConsistentHash(IDS4)
    packet = codec.decode_packet(codec.encode_packet(codec.Packet(session_id="sess-77")))
    assert b.pick(packet) == b.pick_key("sess-77")
    packet.session_id = "other"
    assert b.pick(packet) == b.pick_key("other")
    from aios_fast.protos import payload_pb2

    assert b.pick(payload_pb2.AIOSPacket(session_id="sess-77")) == b.pick_key("sess-77")
    with pytest.raises(LBConfigError):
        b.pick(None)


def test_hash64_is_pinned(lbmod):
    # Session placement must not change between releases or processes: pin the values.
    assert lbmod.hash64(b"session-1") == 0xA3A50B34F38A8A11
    assert lbmod.hash64(b"") == 0x9CA066F1A4AB2EEA
    assert lbmod.hash64(b"abc", 7) == 0xB8278EBD1DE53FAC


def test_bad_configuration_is_refused(lbmod):
    with pytest.raises(LBConfigError):
        lbmod.RoundRobin([""])
    with pytest.raises(LBConfigError):
        lbmod.RoundRobin(["a"], weights=[1])
    with pytest.raises(LBConfigError):
        lbmod.WeightedRoundRobin(["a"], weights={"a": -1})
    with pytest.raises(LBConfigError):
        lbmod.WeightedRoundRobin(["a"], weights={"a": float("inf")})
    with pytest.raises(LBConfigError):
        lbmod.ConsistentHash(["a"], vnodes=0)
    with pytest.raises(LBConfigError):
        lbmod.Random(["a"], seed="x")
    b = lbmod.RoundRobin(["a"])
    with pytest.raises(UnknownInstanceError):
        b.remove("zzz")
    with pytest.raises(KeyError):  # UnknownInstanceError is a KeyError too
        b.set_healthy("zzz", True)
    with pytest.raises(LBConfigError):
        b.pick_key(5)


def test_state_reports_counters(lbmod):
    b = lbmod.RoundRobin(["a", "b"], weights={"b": 2})
    b.pick()
    b.on_dispatch("a")
    assert b.state("a") == {
        "instance_id": "a",
        "weight": 1.0,
        "healthy": True,
        "draining": False,
        "available": True,
        "outstanding": 1,
        "picks": 1,
    }
    assert b.state("b")["weight"] == 2.0 and "a" in b and len(b) == 2


# ---------------------------------------------------------------------------- twins agree

ops = st.lists(
    st.one_of(
        st.tuples(st.just("pick"), st.integers(0, 300), st.booleans()),
        st.tuples(st.just("finish"), st.integers(0, 9)),
        st.tuples(st.just("health"), st.integers(0, 9), st.booleans()),
        st.tuples(st.just("drain"), st.integers(0, 9), st.booleans()),
        st.tuples(st.just("toggle"), st.integers(0, 9)),
        st.tuples(st.just("weight"), st.integers(0, 9), st.sampled_from([0, 0.5, 1, 2, 7])),
    ),
    max_size=120,
)


def run_ops(balancer, script):
    out = []
    for op in script:
        ids = balancer.instances()
        try:
            if op[0] == "pick":
                iid = balancer.pick_key(f"s{op[1]}")
                out.append(iid)
                if op[2]:
                    balancer.on_dispatch(iid)
            elif op[0] == "finish":
                out.append(balancer.on_finish(f"i{op[1]}"))
            elif op[0] == "toggle":
                iid = f"i{op[1]}"
                balancer.remove(iid) if iid in balancer else balancer.add(iid)
            elif ids:
                iid = ids[op[1] % len(ids)]
                if op[0] == "health":
                    balancer.set_healthy(iid, op[2])
                elif op[0] == "drain":
                    balancer.set_draining(iid, op[2])
                else:
                    balancer.set_weight(iid, op[2])
        except NoInstanceError:
            out.append("none")
    return out, balancer.available(), [balancer.state(i) for i in balancer.instances()]


@pytest.mark.skipif(len(twins("_lb")) < 2, reason="compiled module not in use")
@pytest.mark.parametrize("name", POLICIES)
@settings(max_examples=60, deadline=None)
@given(script=ops, seed=st.integers(0, 2**64 - 1))
def test_twins_make_the_same_picks(name, script, seed):
    results = []
    for mod in twins("_lb"):
        kwargs = {"vnodes": 8} if name == "consistent_hash" else {}
        b = mod.BUILTINS[name]([f"i{k}" for k in range(5)], seed=seed, **kwargs)
        results.append(run_ops(b, script))
    assert results[0] == results[1]


@pytest.mark.skipif(len(twins("_lb")) < 2, reason="compiled module not in use")
def test_weighted_round_robin_rebase_keeps_twins_in_step():
    # Tiny weights make strides of ~1e9, so deadlines pass 2**32 within a few picks and
    # are rebased many times; picks must stay proportional and identical in both twins.
    weights = {"a": 1e-9, "b": 2e-9, "c": 4e-9, "d": 1e-9}
    runs = []
    for mod in twins("_lb"):
        b = mod.WeightedRoundRobin(list(weights), weights=weights)
        runs.append([b.pick() for _ in range(800)])
    assert runs[0] == runs[1]
    counts = Counter(runs[0])
    assert [counts[k] for k in "abcd"] == [100, 200, 400, 100]
