"""The registry's side of the trust model, against a real server process: tokens by
role, JSON bodies only, Host names checked, read-only mode, loopback unless a token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from .seed_docs import CLUSTER, fresh
from .test_api import ROOT, Server, free_port

READ, ADMIN = "read-token-" + "r" * 20, "admin-token-" + "a" * 20


@pytest.fixture
def secured(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"read {READ}\nadmin {ADMIN}\ninfer infer-token-{'i' * 20}\n")
    srv = Server(tmp_path / "registry.sqlite3", "--auth-file", str(tokens))
    yield srv
    srv.stop()


def call(port: int, method: str, path: str, token: str | None = None, body=None,
         content_type: str = "application/json", host: str | None = None):  # fmt: skip
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if host:
        headers["Host"] = host
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers=headers)  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_route_needs_its_role(secured):
    port = secured.port
    query = {"filter": {"status": "live"}}
    # (method, path, body, role it needs): reads include the query POSTs
    routes = [
        ("GET", "/clusters", None, "read"),
        ("POST", "/clusters/query", query, "read"),
        ("GET", "/blocks", None, "read"),
        ("POST", "/vdags", query, "read"),
        ("GET", "/vdag-controllers", None, "read"),
        ("POST", "/clusters", fresh(CLUSTER), "admin"),
        ("PUT", f"/clusters/{CLUSTER['id']}", {"$set": {"status": "dead"}}, "admin"),
        ("DELETE", f"/clusters/{CLUSTER['id']}", None, "admin"),
    ]
    for method, path, body, role in routes:
        assert call(port, method, path, None, body) == 401, (method, path)
        assert call(port, method, path, "not-a-token-at-all", body) == 401, (method, path)
        if role == "admin":
            assert call(port, method, path, READ, body) == 403, (method, path)
        assert call(port, method, path, ADMIN if role == "admin" else READ, body) < 400, (
            method, path)  # fmt: skip
    assert call(port, "GET", "/health") == 200  # probes need no token


def test_bodies_must_be_json(secured):
    status = call(secured.port, "POST", "/clusters", ADMIN, fresh(CLUSTER),
                  content_type="text/plain")  # fmt: skip
    assert status == 415
    status = call(secured.port, "POST", "/clusters/query", READ, {"filter": {}},
                  content_type="application/x-www-form-urlencoded")  # fmt: skip
    assert status == 415


def test_a_rebinding_host_name_is_refused(secured):
    port = secured.port
    assert call(port, "GET", "/clusters", READ, host=f"evil.example:{port}") == 403
    assert call(port, "GET", "/clusters", READ, host=f"localhost:{port}") == 200
    assert call(port, "GET", "/clusters", READ, host=f"127.0.0.1:{port}") == 200


def test_read_only_mode(tmp_path):
    srv = Server(tmp_path / "registry.sqlite3", "--read-only")
    try:
        assert call(srv.port, "POST", "/clusters", None, fresh(CLUSTER)) == 405
        assert call(srv.port, "POST", "/clusters/query", None, {"filter": {}}) == 200
    finally:
        srv.stop()


def test_no_token_means_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AIOS_FAST_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "registry_server", "--host", "0.0.0.0", "--port",
         str(free_port()), "--db", str(tmp_path / "r.sqlite3")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0" in lines[0], out.stderr


def test_https(tmp_path):
    """--tls-cert/--tls-key: the registry answers HTTPS to a client trusting the CA,
    and nothing to plain HTTP."""
    import ssl

    from ..tlsutil import make_pki

    pki = make_pki(tmp_path, ("registry",))
    cert, key = pki["registry"]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry_server", "--port", str(port), "--db",
         str(tmp_path / "r.sqlite3"), "--tls-cert", cert, "--tls-key", key],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().startswith(f"registry on https://127.0.0.1:{port}")
        context = ssl.create_default_context(cafile=pki["ca"][0])
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5,
                                            context=context) as resp:  # fmt: skip
                    assert resp.status == 200
                    break
            except urllib.error.URLError:
                import time

                time.sleep(0.1)
        else:
            raise AssertionError("no HTTPS answer")
        with pytest.raises((urllib.error.URLError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        proc.terminate()
        proc.wait(15)
