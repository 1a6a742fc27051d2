"""``python -m bench.protocols --peers`` without its optional peer: one line saying how
to install nvidia-pytriton, exit status 2, nothing started (the peer is never part of
the test installs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from .procs import ROOT


def test_peers_without_pytriton_say_how_to_install_it_in_one_line():
    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("nvidia-pytriton is installed here")
    out = subprocess.run([sys.executable, "-m", "bench.protocols", "--peers",
                          "--peer-python", sys.executable], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr  # no traceback
    assert "nvidia-pytriton" in lines[0] and "pip install" in lines[0]
    assert out.stdout == ""
