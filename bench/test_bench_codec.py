"""pytest-benchmark view of bench.codec: ``python -m pytest bench --benchmark-enable``.

Each case runs with protobuf (the baseline), the compiled codec and the pure twin, grouped
by case so pytest-benchmark's table shows them side by side.
"""

from __future__ import annotations

import pytest

from aios_fast import _codec_py

from . import codec as bench_codec

IMPLS = {"protobuf": None, "py": _codec_py}
try:
    from aios_fast import _codec

    IMPLS["c"] = _codec
except ImportError:  # pure build: the c rows are skipped below
    pass

CASES = [c for c in bench_codec.cases(None) if c != bench_codec.HARNESS]


@pytest.mark.parametrize("impl", ["protobuf", "c", "py"])
@pytest.mark.parametrize("case", CASES)
def test_codec(benchmark, case, impl):
    if impl not in IMPLS:
        pytest.skip("compiled codec not built")
    benchmark.group = case
    fn = bench_codec.cases(IMPLS[impl])[case]
    benchmark(fn)
