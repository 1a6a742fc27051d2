"""Build choices are said, not silent: without libnghttp2's headers the native front is
left out of the build, `make` says so loudly and rebuilds once the headers are there,
and an executor whose "auto" front falls back to grpcio warns with what to install."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aios_fast import _select
from aios_fast.errors import AiosFastError
from aios_fast.executor import native_front

from .procs import ROOT

HEADERS = ("/usr/include/nghttp2/nghttp2.h", "/usr/local/include/nghttp2/nghttp2.h")


def _make_n(venv: Path) -> str:
    out = subprocess.run(["make", "-n", "setup", f"VENV={venv}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_rebuilds_when_the_native_front_becomes_buildable(tmp_path):
    """The install stamp remembers whether the headers were there: a change either way
    (apt-get install libnghttp2-dev after a first build) installs again."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    present = any(os.path.exists(h) for h in HEADERS)
    now = time.time()
    stale = venv / f".installed-front-{'no' if present else 'yes'}"  # the other state
    stamp = venv / ".installed"
    for path in (stale, stamp):
        path.touch()
        os.utime(path, (now, now))
    assert " -e ." in _make_n(venv)  # the headers came (or went): rebuild
    stale.unlink()
    mark = venv / f".installed-front-{'yes' if present else 'no'}"
    mark.touch()
    os.utime(mark, (now - 10, now - 10))
    assert " -e ." not in _make_n(venv)  # as built: nothing to do


def test_auto_front_falling_back_to_grpcio_warns_with_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(_select, "use_extensions", lambda: True)
    monkeypatch.setitem(sys.modules, "aios_fast._front", None)  # as if not built
    with caplog.at_level(logging.WARNING, logger="aios_fast.executor"):
        assert native_front.resolve_front("auto") == "grpcio"
    [record] = [r for r in caplog.records if "native gRPC front is not built" in r.getMessage()]
    assert "libnghttp2-dev" in record.getMessage() and "make setup" in record.getMessage()
    with pytest.raises(AiosFastError, match="libnghttp2-dev"):
        native_front.resolve_front("native")


def test_the_missing_front_warning_runs_nothing(tmp_path):
    """The warning names the fix as text: a command in it (backticks) once ran `make
    setup` from inside `make setup`, forever, on every machine without the headers."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    line = next(x for x in _make_n(venv).splitlines() if "import aios_fast._front" in x)
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "ran"
    for name in ("make", "apt-get"):
        (fake / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (fake / name).chmod(0o755)
    script = line.replace(f"{venv}/bin/python", "false", 1)
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{fake}:/usr/bin:/bin"}, timeout=30)  # fmt: skip
    assert not marker.exists()
    assert "NOT built" in out.stderr and "make setup" in out.stderr
