"""Tokens, roles, safe binding and a management API that cannot run code, against real
processes (issue: security). Tokens come from a token file with one token per role."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import grpc
import pytest

from aios_fast import auth
from aios_fast.sidecars.actuator import LocalActuator
from aios_fast.sidecars.autoscale import AutoScaler
from aios_fast.sidecars.healthcheck import HealthChecker

from .procs import ROOT, frame, free_port, http, start_executor, start_instance

TOKENS = {role: f"{role}-token-{'x' * 20}" for role in ("infer", "admin", "read")}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text("".join(f"{role} {token}\n" for role, token in TOKENS.items()))
    return str(path)


@pytest.fixture(scope="module")
def block(token_file):
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", token_file)
    executor, port = start_executor({"i": instance.info}, "--auth-file", token_file,
                                    token=TOKENS["infer"])  # fmt: skip
    yield executor, port, instance
    executor.stop()
    instance.stop()


def grpc_code(port: int, method: str, token: str | None, stream: bool = False):
    metadata = (("authorization", auth.bearer(token)),) if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            if stream:
                call = ch.stream_stream(f"/InferenceProxy/{method}")
                list(call(iter([frame()]), timeout=10, metadata=metadata))
            else:
                ch.unary_unary(f"/InferenceProxy/{method}")(frame(), timeout=10,
                                                            metadata=metadata)  # fmt: skip
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def post(port: int, token: str | None, action: str = "status", data: dict | None = None,
         path: str = "/mgmt") -> tuple[int, dict]:  # fmt: skip
    import urllib.error
    import urllib.request

    body = json.dumps({"mgmt_action": action, "mgmt_data": data or {}}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = auth.bearer(token)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", body, headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(port: int, path: str, token: str | None = None) -> int:
    import urllib.error
    import urllib.request

    headers = {"Authorization": auth.bearer(token)} if token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers), timeout=10
        ) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


UNAUTH, DENIED, OK = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                      grpc.StatusCode.OK)  # fmt: skip


@pytest.mark.parametrize("method,stream", [("infer", False), ("infer_result", False),
                                           ("infer_stream", True)])  # fmt: skip
def test_executor_grpc_needs_the_infer_role(block, method, stream):
    _, port, _ = block
    assert grpc_code(port, method, None, stream) == UNAUTH
    assert grpc_code(port, method, "not-a-token-but-long-enough", stream) == UNAUTH
    assert grpc_code(port, method, TOKENS["read"], stream) == DENIED
    assert grpc_code(port, method, TOKENS["admin"], stream) == DENIED
    assert grpc_code(port, method, TOKENS["infer"], stream) == OK


def test_instance_grpc_needs_the_infer_role(block):
    _, _, instance = block
    port = instance.info["port"]
    assert grpc_code(port, "infer_result", None) == UNAUTH
    assert grpc_code(port, "infer_result", TOKENS["admin"]) == DENIED
    assert grpc_code(port, "infer_result", TOKENS["infer"]) == OK
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:  # the link itself
        call = ch.stream_stream("/aios.InstanceLink/Tasks")(iter([]), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            list(call)
        assert err.value.code() == UNAUTH


def test_http_endpoints_by_role(block):
    executor, _, instance = block
    for mgmt_port in (executor.info["mgmt_port"], instance.info["mgmt_port"]):
        assert post(mgmt_port, None, "stats")[0] == 401
        status, body = post(mgmt_port, TOKENS["infer"], "stats")
        assert status == 403 and "admin" in body["message"]
        assert post(mgmt_port, TOKENS["read"], "stats")[0] == 403
        assert get(mgmt_port, "/health") in (200, 503)  # probes need no token
    assert post(executor.info["mgmt_port"], TOKENS["admin"], "stats")[0] == 200
    # metrics are open on loopback; an instance's /stats needs the read role
    assert get(executor.info["metrics_port"], "/metrics") == 200
    assert get(instance.info["mgmt_port"], "/stats") == 401
    assert get(instance.info["mgmt_port"], "/stats", TOKENS["infer"]) == 403
    assert get(instance.info["mgmt_port"], "/stats", TOKENS["read"]) == 200


def test_sidecars_need_the_admin_role(token_file):
    tokens = auth.Auth({TOKENS["admin"]: ("admin",), TOKENS["read"]: ("read",)})

    async def run():
        checker = HealthChecker("http://127.0.0.1:1", interval=60, auth=tokens)
        scaler = AutoScaler("http://127.0.0.1:1", LocalActuator("aios_fast.block:EchoBlock"),
                            interval=60, max_instances=2, auth=tokens)  # fmt: skip
        await checker.start("127.0.0.1", 0)
        await scaler.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        try:
            out = []
            for sidecar in (checker, scaler):
                for token in (None, TOKENS["read"], TOKENS["admin"]):
                    out.append(await loop.run_in_executor(
                        None, lambda t=token, p=sidecar.port: post(p, t)[0]))  # fmt: skip
            return out
        finally:
            await checker.stop()
            await scaler.stop()

    assert asyncio.run(run()) == [401, 403, 200, 401, 403, 200]


def test_management_cannot_load_code_or_point_anywhere(block, tmp_path):
    executor, _, _ = block
    mp = executor.info["mgmt_port"]
    admin = TOKENS["admin"]
    evil = tmp_path / "evil.py"
    evil.write_text("import os\nos.system('touch /tmp/aios-owned')\n")
    for uri in (
        str(evil),
        "os:system",
        "tests.policies.sticky_module",
        str(tmp_path),
        "file:" + str(evil),
    ):
        status, body = post(mp, admin, "switch_policy", {"policyRuleURI": uri})
        assert status == 400 and "--allow-policy-paths" in body["message"], (uri, body)
    assert post(mp, admin, "switch_policy", {"policyRuleURI": "builtin:least_outstanding"})[0] \
        == 200  # fmt: skip
    for target in ("http://127.0.0.1:80/x", "user@127.0.0.1:80", "127.0.0.1:0",
                   "127.0.0.1:99999", "127.0.0.1/x:80"):  # fmt: skip
        status, body = post(mp, admin, "add_instance", {"id": "x", "target": target})
        assert status == 400 and "host:port" in body["message"], (target, body)
    status, body = post(
        mp,
        admin,
        "add_instance",
        {"id": "x", "target": "127.0.0.1:1", "health": "http://169.254.169.254/"},
    )
    assert status == 400, body


def test_allowed_hosts_and_policy_paths_when_the_operator_allows(token_file):
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", token_file)
    executor, _ = start_executor({}, "--auth-file", token_file, "--allowed-host", "127.0.0.1",
                                 "--allow-policy-paths", token=TOKENS["infer"])  # fmt: skip
    try:
        mp, admin = executor.info["mgmt_port"], TOKENS["admin"]
        status, body = post(mp, admin, "add_instance",
                            {"id": "x", "target": "10.0.0.1:50051"})  # fmt: skip
        assert status == 403 and "allowed host" in body["message"]
        status, body = post(
            mp, admin, "add_instance", {"id": "i", "target": f"127.0.0.1:{instance.info['port']}"}
        )
        assert status == 200, body
        uri = "tests.policies.sticky_module"
        assert post(mp, admin, "switch_policy", {"policyRuleURI": uri})[0] == 200
    finally:
        executor.stop()
        instance.stop()


def test_scaler_bounds_never_pass_the_block_document():
    async def run():
        scaler = AutoScaler("http://127.0.0.1:1", LocalActuator("aios_fast.block:EchoBlock"),
                            interval=60, min_instances=1, max_instances=3)  # fmt: skip
        return scaler.set_bounds({"min_instances": 1, "max_instances": 3}), scaler

    ok, scaler = asyncio.run(run())
    assert ok == {"min_instances": 1, "max_instances": 3}
    from aios_fast.service.http import MgmtError

    with pytest.raises(MgmtError) as err:
        scaler.set_bounds({"min_instances": 1, "max_instances": 100_000})
    assert err.value.status == 403 and "hard cap 3" in str(err.value)


def _listening_on(port: int) -> set[str]:
    """The local addresses listening on TCP ``port`` (from /proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # LISTEN
                    found.add(address)
    return found


def test_no_token_means_loopback_only():
    """0.0.0.0 without a token: one clear line, exit 2; with --insecure it starts, and
    management stays on 127.0.0.1 either way (--http-host)."""
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if k != auth.ENV_TOKEN}
    env["PYTHONPATH"] = str(ROOT)
    args = [sys.executable, "-m", "aios_fast.executor", "--host", "0.0.0.0", "--port",
            str(port), "--workers", "1", "--mgmt-port", "0", "--metrics-port", "0"]  # fmt: skip
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0" in lines[0], out.stderr
    proc = subprocess.Popen([*args, "--insecure"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        info = json.loads(proc.stdout.readline())
        any_address = {"00000000", "0" * 32}  # 0.0.0.0, or [::] (dual stack)
        assert _listening_on(info["port"]) & any_address  # gRPC: everywhere, as asked
        assert _listening_on(info["mgmt_port"]) == {"0100007F"}  # management: 127.0.0.1
        assert _listening_on(info["metrics_port"]) == {"0100007F"}
        assert http(f"http://127.0.0.1:{info['mgmt_port']}/health")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_token_file_is_reread_on_sighup(tmp_path):
    path = tmp_path / "tokens"
    old, new = "admin-old-" + "y" * 20, "admin-new-" + "z" * 20
    path.write_text(f"* {old}\n")
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", str(path))
    try:
        mp = instance.info["mgmt_port"]
        assert get(mp, "/stats", old) == 200
        path.write_text(f"* {new}\n")
        instance.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while get(mp, "/stats", new) != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert get(mp, "/stats", new) == 200 and get(mp, "/stats", old) == 401
        path.write_text("nonsense line here\n")  # a broken file keeps the tokens in force
        instance.signal(signal.SIGHUP)
        time.sleep(0.5)
        assert get(mp, "/stats", new) == 200
    finally:
        instance.stop()
    assert "tokens not re-read" in instance.p.stderr.read()


def test_token_file_errors_are_one_line(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("superuser abcdefghijklmnopqrstuvwxyz\n")
    args = [sys.executable, "-m", "aios_fast.executor", "--port", str(free_port()),
            "--auth-file", str(path), "--workers", "1"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"executor: cannot start: {path}:1: unknown role 'superuser' (roles: infer, admin, "
        "read, or *)"
    ]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from .tlsutil import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"), ("node", "client", "stranger"))


def test_tls_everywhere_with_mutual_tls(pki, tmp_path_factory):
    """Executor and instance serve TLS and ask for client certificates; the link between
    them is TLS. A client with the CA and a certificate works; plaintext, a client that
    does not trust the CA, and one without a certificate are refused."""
    from aios_fast.tls import TLS

    from .tlsutil import make_pki

    (cert, key), (ca, _) = pki["node"], pki["ca"]
    tls_args = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", ca)
    instance = start_instance("aios_fast.block:EchoBlock", None, *tls_args)
    client = TLS(*pki["client"], ca)
    executor = subprocess.Popen(
        [sys.executable, "-m", "aios_fast.executor", "--port", str(free_port()), "--workers",
         "1", "--mgmt-port", "0", "--metrics-port", "0", *tls_args, "--instance",
         f"i=127.0.0.1:{instance.info['port']}@127.0.0.1:{instance.info['mgmt_port']}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        info = json.loads(executor.stdout.readline())
        target = f"127.0.0.1:{info['port']}"
        answer = None
        for _ in range(100):  # until the TLS link is up
            with client.channel(target) as ch:
                try:
                    answer = ch.unary_unary("/InferenceProxy/infer_result")(frame(), timeout=5)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    time.sleep(0.1)
        assert answer is not None

        def refused(tls) -> bool:
            with tls.channel(target) as ch:
                try:
                    ch.unary_unary("/InferenceProxy/infer_result")(frame(), timeout=3)
                except grpc.RpcError as exc:
                    return exc.code() == grpc.StatusCode.UNAVAILABLE
            return False

        other_ca = make_pki(tmp_path_factory.mktemp("other"), ())["ca"][0]
        assert refused(TLS())  # plaintext
        assert refused(TLS(ca=ca))  # no client certificate
        assert refused(TLS(*pki["client"], other_ca))  # does not trust the server's CA
        # management over HTTPS: a client certificate is needed there too
        import ssl
        import urllib.request

        url = f"https://127.0.0.1:{info['mgmt_port']}/mgmt"
        body = json.dumps({"mgmt_action": "list_instances"}).encode()
        req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10, context=client.client_context()) as r:
            rows = json.loads(r.read())["data"]
        assert rows[0]["up"] is True
        with pytest.raises((ssl.SSLError, OSError)):
            urllib.request.urlopen(req, timeout=10, context=TLS(ca=ca).client_context())
        with pytest.raises(OSError):  # plain HTTP to a TLS port
            urllib.request.urlopen(url.replace("https", "http"), body, timeout=10)
    finally:
        executor.send_signal(signal.SIGTERM)
        executor.wait(20)
        instance.stop()


def test_block_up_over_tls_with_tokens(pki, tmp_path):
    """``aios-fast block up`` with certificates and a token file: every process serves
    TLS and checks tokens, and its own checked traffic gets through."""
    (cert, key), (ca, _) = pki["node"], pki["ca"]
    tokens = tmp_path / "tokens"
    tokens.write_text(f"* {'t' * 32}\n")
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast", "block", "up", "--ports", "auto", "--traffic", "300",
         "--once", "--auth-file", str(tokens), "--tls-cert", cert, "--tls-key", key,
         "--tls-ca", ca],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "https://" in out.stdout and "300" in out.stdout


def test_tls_file_errors_are_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast.executor", "--port", str(free_port()), "--tls-cert",
         str(tmp_path / "nope.pem"), "--tls-key", str(tmp_path / "nope.key")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"executor: cannot start: cannot read the TLS certificate {tmp_path / 'nope.pem'}: "
        "No such file or directory"
    ]


# ------------------------------------------------------------------ block up's own token


SEED_CLIENT = """
import grpc, sys, time
from protos import inference_pb2, inference_pb2_grpc, payload_pb2
packet = payload_pb2.AIOSPacket(session_id="s", seq_no=1, data='{"input": "hi"}', ts=time.time())
stub = inference_pb2_grpc.InferenceProxyStub(grpc.insecure_channel(sys.argv[1]))
print(stub.infer(inference_pb2.InferenceMessage(rpc_data=packet.SerializeToString())).message)
"""


def test_block_up_without_a_token_guards_everything_but_the_data_plane(tmp_path):
    """No token configured: ``block up`` generates one. The executor's data plane stays
    open on loopback (the seeds' client sends none); management, the instances and the
    sidecars refuse callers without it; the same user's ``aios-fast mgmt`` finds it in a
    0600 file that is gone when the block stops."""
    import os

    from .procs import Proc

    env_token = os.environ.pop(auth.ENV_TOKEN, None)
    proc = Proc(["-m", "aios_fast", "block", "up", "--ports", "auto", "--json"])
    try:
        info = proc.info
        port = int(info["grpc"].rsplit(":", 1)[1])
        for method, stream in (("infer", False), ("infer_result", False),
                               ("infer_stream", True)):  # fmt: skip
            assert grpc_code(port, method, None, stream) == OK
        script = tmp_path / "client.py"
        script.write_text(SEED_CLIENT)
        out = subprocess.run([sys.executable, str(script), info["grpc"]], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr

        token = json.loads(open(info["token_file"]).read())["token"]
        assert os.stat(info["token_file"]).st_mode & 0o777 == 0o600
        assert os.stat(os.path.dirname(info["token_file"])).st_mode & 0o077 == 0
        for key in ("executor_mgmt", "health_checker_mgmt", "autoscaler_mgmt"):
            mgmt_port = int(info[key].rsplit(":", 1)[1].split("/")[0])
            assert post(mgmt_port, None, "status")[0] == 401
            assert post(mgmt_port, "x" * 43, "status")[0] == 401
            assert post(mgmt_port, token, "stats" if key == "executor_mgmt" else "status")[0] == 200
        for instance in info["instances"].values():  # only the executor may send tasks
            iport = int(instance["grpc"].rsplit(":", 1)[1])
            assert grpc_code(iport, "infer_result", None) == UNAUTH
            assert grpc_code(iport, "infer_result", token) == OK
            mport = int(instance["health"].rsplit(":", 1)[1].split("/")[0])
            assert post(mport, None, "stats")[0] == 401
            assert get(mport, "/health") == 200
        # the executor does not hand the data plane's openness to its management port
        status, _ = post(int(info["executor_mgmt"].rsplit(":", 1)[1].split("/")[0]), None,
                         "add_instance", {"id": "evil", "target": "127.0.0.1:1"})  # fmt: skip
        assert status == 401
        cli = subprocess.run([sys.executable, "-m", "aios_fast", "mgmt", info["executor_mgmt"],
                              "list_instances"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert cli.returncode == 0 and len(json.loads(cli.stdout)["data"]) == 2, cli.stderr
    finally:
        if env_token is not None:
            os.environ[auth.ENV_TOKEN] = env_token
        proc.stop(60)
    assert not os.path.exists(info["token_file"])


def test_open_roles_are_for_loopback_only():
    tokens = auth.Auth({"t" * 32: auth.ROLES}, open_roles=("infer",))
    assert tokens.requires("admin") and not tokens.requires("infer")
    tokens.check(None, "infer")  # open: no token needed
    with pytest.raises(auth.AuthError):
        tokens.check(None, "admin")
    auth.check_bind("127.0.0.1", tokens, False, "executor")
    with pytest.raises(auth.AiosFastError, match="open to anyone"):
        auth.check_bind("0.0.0.0", tokens, False, "executor")
    auth.check_bind("0.0.0.0", tokens, True, "executor")  # --insecure: the operator's call
    with pytest.raises(auth.AiosFastError, match="unknown role"):
        auth.Auth({}, open_roles=("root",))
    # a role is only open where tokens exist at all; without tokens nothing is checked
    assert not auth.Auth(open_roles=("infer",)).requires("admin")


def test_local_token_lookup(tmp_path, monkeypatch):
    """Found by the address called (URL or host:port, localhost = 127.0.0.1); files of
    blocks that are gone, broken files and other addresses give nothing; a runtime
    directory others can read is refused."""
    import os

    monkeypatch.setenv(auth.RUNTIME_ENV, str(tmp_path / "run"))
    handoff = auth.TokenHandoff("k" * 43)
    path = handoff.write(["127.0.0.1:50051", "http://127.0.0.1:18001/mgmt"])
    assert auth.local_token("localhost:50051") == "k" * 43
    assert auth.local_token("http://localhost:18001") == "k" * 43
    assert auth.local_token("127.0.0.1:18000") is None
    assert auth.local_token("not an address") is None
    (tmp_path / "run" / "block-1.json").write_text("{broken")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run" / "block-2.json").write_text(json.dumps(
        {"pid": dead.pid, "token": "d" * 43, "endpoints": ["127.0.0.1:9"]}))  # fmt: skip
    assert auth.local_token("127.0.0.1:9") is None  # that block is gone
    assert auth.local_token("127.0.0.1:50051") == "k" * 43
    handoff.remove()
    assert not path.exists() and auth.local_token("127.0.0.1:50051") is None
    os.chmod(tmp_path / "run", 0o755)
    with pytest.raises(auth.AiosFastError, match="private"):
        handoff.write(["127.0.0.1:50051"])


def test_a_killed_blocks_token_file_is_pruned_at_the_next_start(tmp_path, monkeypatch):
    """``kill -9`` of ``block up`` leaves its token file; the next hand-off removes it
    (and a second write replaces the endpoints: instances added later)."""
    monkeypatch.setenv(auth.RUNTIME_ENV, str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "run" / f"block-{dead.pid}.json"
    stale.write_text(json.dumps({"pid": dead.pid, "token": "d" * 43, "endpoints": []}))
    handoff = auth.TokenHandoff("k" * 43)
    handoff.write(["127.0.0.1:50051"])
    assert not stale.exists()
    path = handoff.write(["127.0.0.1:50051", "127.0.0.1:18001"])
    assert auth.local_token("127.0.0.1:18001") == "k" * 43
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    handoff.remove()
