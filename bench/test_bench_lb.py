"""pytest-benchmark view of bench.lb: one pick per round, compiled vs pure vs the seeds'
sample policy, for 4 and 1024 instances (``python -m pytest bench --benchmark-enable``)."""

from __future__ import annotations

import pytest

from aios_fast import _lb_py, codec

from . import payloads
from .lb import sample_balancer

try:
    from aios_fast import _lb
except ImportError:  # pure build
    _lb = None

PACKET = codec.decode_message(payloads.small_message())


@pytest.mark.parametrize("n", [4, 1024])
@pytest.mark.parametrize("impl", ["c", "py", "sample"])
@pytest.mark.parametrize("policy", sorted(_lb_py.BUILTINS))
def test_pick(benchmark, policy, impl, n):
    ids = [f"instance-{i:04d}" for i in range(n)]
    if impl == "sample":
        if policy != "round_robin":
            pytest.skip("the sample policy is measured once per size")
        balancer = sample_balancer(ids)
    elif impl == "c":
        if _lb is None:
            pytest.skip("compiled balancer not built")
        balancer = _lb.BUILTINS[policy](ids, seed=1)
    else:
        balancer = _lb_py.BUILTINS[policy](ids, seed=1)
    benchmark.group = f"pick, {n} instances"
    benchmark(balancer.pick, PACKET)
