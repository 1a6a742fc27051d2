"""consistent_hash with bounded loads (opt-in, both twins): at 1,024 instances no instance
carries more than ceil(balance_factor * mean) in-flight tasks, the twins agree pick for
pick, and an idle balancer is the plain ring."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aios_fast.errors import LBConfigError

from .conftest import twins
from .test_lb import ops, run_ops

N = 1024
IDS = [f"instance-{i:04d}" for i in range(N)]


@pytest.mark.parametrize("mod", twins("_lb"), ids=lambda m: m.IMPLEMENTATION)
def test_in_flight_share_is_bounded_at_1024_instances(mod):
    # 160 vnodes: arcs of 0.70-1.32 of 1/N, so the plain ring is clearly unbalanced (and
    # the pure twin builds its ring quickly); the bound does not depend on vnodes.
    bounded = mod.ConsistentHash(IDS, vnodes=160, balance_factor=1.25)
    plain = mod.ConsistentHash(IDS, vnodes=160, balance_factor=None)
    rng = random.Random(7)
    tasks = 20 * N
    for k in range(tasks):
        session = f"session-{rng.getrandbits(40)}"
        for b in (bounded, plain):
            b.on_dispatch(b.pick_key(session))
        if k % 997 == 0:  # the bound holds at every point, not just at the end
            outs = [bounded.outstanding(i) for i in IDS]
            assert max(outs) <= math.ceil(1.25 * (k + 1) / N)
    outs = [bounded.outstanding(i) for i in IDS]
    assert sum(outs) == tasks
    assert max(outs) <= math.ceil(1.25 * tasks / N)  # 25 for a mean of 20
    # The plain ring, same sessions: arcs of 0.70-1.32 of 1/N plus chance go well past it.
    assert max(plain.outstanding(i) for i in IDS) > math.ceil(1.25 * tasks / N)


def test_twins_agree_pick_for_pick_under_load():
    mods = twins("_lb")
    if len(mods) < 2:
        pytest.skip("compiled module not in use")
    ids = IDS[:64]
    runs = []
    for mod in mods:
        b = mod.ConsistentHash(ids, balance_factor=1.1)
        rng = random.Random(3)
        picks = []
        for _ in range(20000):
            if rng.random() < 0.45:
                b.on_finish(ids[rng.randrange(len(ids))])
            else:
                iid = b.pick_key(f"s{rng.randrange(5000)}")
                b.on_dispatch(iid)
                picks.append(iid)
            if rng.random() < 0.002:
                b.set_healthy(ids[rng.randrange(len(ids))], rng.random() < 0.7)
        runs.append(picks)
    assert runs[0] == runs[1]


def test_idle_balancer_is_the_plain_ring(lbmod):
    ids = [f"pod-{k}" for k in range(50)]
    bounded = lbmod.ConsistentHash(ids, balance_factor=1.25)
    plain = lbmod.ConsistentHash(ids, balance_factor=0)
    for k in range(3000):
        assert bounded.pick_key(f"s-{k}") == plain.pick_key(f"s-{k}")


def test_a_full_instance_spills_to_the_next_and_gets_its_sessions_back(lbmod):
    ids = [f"pod-{k}" for k in range(4)]
    b = lbmod.ConsistentHash(ids, balance_factor=1.25)
    home = b.pick_key("sticky")
    for _ in range(3):
        b.on_dispatch(home)  # 3 in flight on home, none elsewhere: 3 * 4 >= 1.25 * 4
    spill = b.pick_key("sticky")
    assert spill != home
    for _ in range(3):
        b.on_finish(home)
    assert b.pick_key("sticky") == home


def test_bounded_loads_are_opt_in(lbmod):
    b = lbmod.ConsistentHash(["a", "b"])
    home = b.pick_key("s")
    for _ in range(50):
        b.on_dispatch(home)
    assert b.pick_key("s") == home  # strict affinity by default


@pytest.mark.parametrize("bad", [0.5, -1, float("inf"), float("nan"), "2", True])
def test_balance_factor_is_checked(lbmod, bad):
    with pytest.raises(LBConfigError):
        lbmod.ConsistentHash(["a"], balance_factor=bad)


@pytest.mark.skipif(len(twins("_lb")) < 2, reason="compiled module not in use")
@settings(max_examples=80, deadline=None)
@given(script=ops, seed=st.integers(0, 2**64 - 1), factor=st.sampled_from([1.0, 1.25, 2.0]))
def test_twins_make_the_same_bounded_picks(script, seed, factor):
    results = []
    for mod in twins("_lb"):
        b = mod.ConsistentHash(
            [f"i{k}" for k in range(5)], seed=seed, vnodes=8, balance_factor=factor
        )
        results.append(run_ops(b, script))
    assert results[0] == results[1]
