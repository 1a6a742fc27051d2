"""The executor's HTTP/JSON way in (executor.http_front), against real processes: the
seeds' packet as JSON through the same router as gRPC (results, files, infer's
acceptance, books), errors as HTTP status + {"error", "code"}, the message limit at the
byte, a deadline that passes, no instance, tokens, drain, and the OpenAPI document."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from aios_fast import codec

from .procs import get_text, mgmt, start_executor, start_instance, wait_stats

TOKEN = "http-front-token-" + "x" * 20


def post(port: int, body, *, block: str = "echo", query: str = "", headers=None,
         timeout: float = 30.0) -> tuple[int, dict]:  # fmt: skip
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/blocks/{block}/infer{query}",
                                 data=data, headers={"Content-Type": "application/json",
                                                     **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start(instance, *extra: str):
    instances = {"i0": instance.info["port"]} if instance else {}
    executor, _ = start_executor(instances, "--http-port", "0", "--block-id", "echo", *extra)
    return executor, executor.info["http_port"], executor.info["mgmt_port"]


@pytest.fixture(scope="module")
def echo():
    instance = start_instance()
    executor, http_port, mgmt_port = start(instance)
    yield http_port, mgmt_port
    executor.stop()
    instance.stop()


def test_a_packet_in_json_comes_back_as_json_with_its_files(echo):
    port, mgmt_port = echo
    before = mgmt(mgmt_port, "stats")[1]["data"]["tasks"]
    files = [{"metadata": "{}", "file_data": base64.b64encode(bytes(range(256))).decode()}]
    status, out = post(port, {"session_id": "h", "seq_no": 3, "data": '{"a": 1}', "ts": 1.5,
                              "files": files})  # fmt: skip
    assert status == 200, out
    assert (out["session_id"], out["seq_no"], out["data"]) == ("h", 3, '{"a": 1}')
    assert set(out) == {"session_id", "seq_no", "data", "ts", "frame_ptr", "output_ptr", "files"}
    status, out = post(port, {"data": {"not": "a string"}})  # sent as its JSON text
    assert status == 200 and json.loads(out["data"]) == {"not": "a string"}
    status, out = post(port, {"seq_no": 9}, query="?wait=false")  # the seeds' infer
    assert (status, out) == (202, {"accepted": True})
    after = mgmt(mgmt_port, "stats")[1]["data"]["tasks"]  # the router's books count them
    assert after["received"] - before["received"] == 3
    assert after["completed"] - before["completed"] >= 2


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not JSON"),
        ({"seq_no": "one"}, 400, "seq_no"),
        ({"sesion_id": "typo"}, 400, "sesion_id"),
        ({"files": [{"file_data": "***"}]}, 400, "base64"),
        ({"seq_no": -1}, 400, "seq_no"),
    ],
)
def test_bad_requests_are_400_with_one_line_errors(echo, body, status, words):
    got, out = post(echo[0], body)
    assert got == status and out["code"] == "INVALID_ARGUMENT"
    assert words in out["error"] and "\n" not in out["error"]


def test_unknown_block_and_bad_timeout(echo):
    status, out = post(echo[0], {}, block="other")
    assert status == 404 and out["code"] == "NOT_FOUND"
    status, out = post(echo[0], {}, headers={"X-Aios-Timeout": "soon"})
    assert status == 400 and "X-Aios-Timeout" in out["error"]


def test_the_message_limit_at_and_just_over():
    limit = 32 * 1024
    instance = start_instance()
    executor, port, _ = start(instance, "--max-message", str(limit))
    try:
        pad = limit
        for _ in range(8):
            size = len(codec.encode_message(codec.Packet(session_id="b", seq_no=1, data="x" * pad)))
            if size == limit:
                break
            pad -= size - limit
        assert post(port, {"session_id": "b", "seq_no": 1, "data": "x" * pad},
                   query="?wait=false")[0] == 202  # fmt: skip
        status, out = post(port, {"session_id": "b", "seq_no": 1, "data": "x" * (pad + 1)},
                           query="?wait=false")  # fmt: skip
        assert status == 413 and out["code"] == "RESOURCE_EXHAUSTED"
        status, out = post(port, {"data": "x" * (10 * limit)})  # over even the body bound
        assert status == 413
    finally:
        executor.stop()
        instance.stop()


def test_a_deadline_that_passes_is_504_and_no_instance_is_503():
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 2.0})
    executor, port, mgmt_port = start(instance)
    try:
        status, out = post(port, {"data": "x"}, headers={"X-Aios-Timeout": "0.3"})
        assert status == 504 and out["code"] == "DEADLINE_EXCEEDED"
        status, out = post(port, {"data": "in time"}, headers={"X-Aios-Timeout": "10"})
        assert status == 200 and out["data"] == "in time"
        post(port, b"{bad json")  # refused before the router: not in its books

        def balanced(t: dict, inflight: int) -> bool:  # the README's identities, exactly
            return (
                inflight == 0
                and t["received"] == (t["invalid"] + t["rejected"] + t["withdrawn"] + t["accepted"])
                and t["accepted"] == t["completed"] + t["failed"] + t["lost"] + t["cancelled"]
            )

        wait_stats(mgmt_port, balanced)
        tasks = mgmt(mgmt_port, "stats")[1]["data"]["tasks"]
        assert tasks["cancelled"] + tasks["withdrawn"] == 1  # the late one, at its instance
    finally:
        executor.stop()
        instance.stop()
    executor, port, _ = start(None)
    try:
        status, out = post(port, {"data": "x"})
        assert status == 503 and out == {"error": "no instance available", "code": "UNAVAILABLE"}
    finally:
        executor.stop()


def test_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"infer {TOKEN}\nread read-only-token-{'y' * 20}\n")
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", str(path))
    executor, _ = start_executor({"i0": instance.info["port"]}, "--http-port", "0",
                                 "--block-id", "echo", "--auth-file", str(path),
                                 token=TOKEN)  # fmt: skip
    port = executor.info["http_port"]
    try:
        assert post(port, {})[0] == 401
        assert post(port, {}, headers={"Authorization": "Bearer wrong-" + "z" * 20})[0] == 401
        status, out = post(
            port, {}, headers={"Authorization": f"Bearer read-only-token-{'y' * 20}"}
        )
        assert status == 403 and out["code"] == "PERMISSION_DENIED"
        status, out = post(port, {"data": "ok"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and out["data"] == "ok"
    finally:
        executor.stop()
        instance.stop()


def test_drain_refuses_new_calls_and_finishes_the_ones_in_flight():
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 1.5})
    executor, port, mgmt_port = start(instance, "--drain-timeout", "10")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(slow=post(port, {"data": "slow"})))
    try:
        thread.start()
        wait_stats(mgmt_port, lambda _, inflight: inflight == 1)  # the slow task is running
        executor.signal()  # SIGTERM: drain
        time.sleep(0.2)
        status, out = post(port, {"data": "late"})
        assert status == 503 and out["code"] == "UNAVAILABLE"
        thread.join(20)
        assert box["slow"][0] == 200 and box["slow"][1]["data"] == "slow"
        assert executor.p.wait(20) == 0
    finally:
        executor.stop()
        instance.stop()


def test_the_openapi_document_and_its_page(echo):
    port = echo[0]
    doc = json.loads(get_text(f"http://127.0.0.1:{port}/v1/openapi.json"))
    assert doc["openapi"].startswith("3.")
    op = doc["paths"]["/v1/blocks/{id}/infer"]["post"]
    assert {"200", "202", "400", "401", "403", "413", "503", "504"} <= set(op["responses"])
    assert set(doc["components"]["schemas"]["Packet"]["properties"]) == {
        "session_id", "seq_no", "data", "ts", "frame_ptr", "output_ptr", "files"}  # fmt: skip
    page = get_text(f"http://127.0.0.1:{port}/v1/docs")
    assert "openapi.json" in page and "<script>" in page


def test_block_up_serves_it_shared_by_its_workers(tmp_path):
    """``ports.http`` in the document: ``block up --ports auto`` serves it (a free port the
    executor's two workers share) and says where; the client's token hand-off covers it."""
    import os
    import signal
    import subprocess
    import sys

    from .procs import ROOT

    document = json.loads((ROOT / "aios_fast" / "examples" / "echo-block.json").read_text())
    document["id"] = "web"
    document["initSettings"]["workers"] = 2
    document["initSettings"].setdefault("ports", {})["http"] = 0
    (tmp_path / "web.json").write_text(json.dumps(document))
    env = dict(os.environ, PYTHONPATH=str(ROOT), AIOS_FAST_RUNTIME_DIR=str(tmp_path / "run"))
    env.pop("AIOS_FAST_TOKEN", None)
    up = subprocess.Popen([sys.executable, "-m", "aios_fast", "block", "up", "web.json",
                           "--ports", "auto", "--json"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        info = json.loads(up.stdout.readline() or "{}")
        assert info.get("http", "").endswith("/v1/blocks/web/infer"), up.stderr.read()[-2000:]
        port = int(info["http"].split(":")[2].split("/")[0])
        for i in range(20):  # both workers answer on the one port
            status, out = post(port, {"seq_no": i, "data": str(i)}, block="web")
            assert status == 200 and out["data"] == str(i), out
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(30)


def test_the_manifests_publish_the_http_port_only_when_set():
    from aios_fast.devtools.manifests import manifests
    from aios_fast.settings import load_document

    from .procs import ROOT

    document = json.loads((ROOT / "aios_fast" / "examples" / "echo-block.json").read_text())

    def executor_service_ports(doc: dict) -> dict:
        objects = manifests(load_document(doc), doc)
        (service,) = [o for o in objects if o["kind"] == "Service"
                      and o["metadata"]["name"].endswith("-executor")]  # fmt: skip
        return {p["name"]: p["port"] for p in service["spec"]["ports"]}

    assert "http" not in executor_service_ports(document)
    document["initSettings"]["ports"] = {"http": 8080}
    assert executor_service_ports(document)["http"] == 8080


def test_the_guides_curl_example_runs(echo):
    import re
    import subprocess

    from .procs import ROOT

    guide = (ROOT / "docs" / "writing-a-block.md").read_text()
    (command,) = [b for b in re.findall(r"```sh\n(.*?)```", guide, re.S) if "/v1/" in b]
    command = command.replace(":18080/", f":{echo[0]}/").replace("/upper/", "/echo/")
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert (answer["session_id"], answer["seq_no"]) == ("s1", 1)
    assert json.loads(answer["data"]) == {"text": "hello"}


def test_the_executor_full_is_429_and_many_concurrent_calls_all_come_back():
    import asyncio

    import aiohttp

    instance = start_instance("tests.blocks:SleepBlock", {"delay": 1.0})
    executor, port, mgmt_port = start(instance, "--max-inflight", "1")
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(slow=post(port, {"data": "first"})))
    try:
        thread.start()
        wait_stats(mgmt_port, lambda _, inflight: inflight == 1)  # the one it may hold
        status, out = post(port, {"data": "second"})
        assert status == 429 and out["code"] == "RESOURCE_EXHAUSTED"
        thread.join(20)
        assert box["slow"][0] == 200
    finally:
        executor.stop()
        instance.stop()

    instance = start_instance()
    executor, port, _ = start(instance)

    async def burst() -> list:
        url = f"http://127.0.0.1:{port}/v1/blocks/echo/infer"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:

            async def one(i: int):
                async with s.post(url, json={"seq_no": i, "data": str(i)}) as r:
                    return r.status, await r.json()

            return await asyncio.gather(*(one(i) for i in range(500)))

    try:
        answers = asyncio.run(burst())
        assert all(status == 200 for status, _ in answers)
        assert [a["seq_no"] for _, a in answers] == list(range(500))
        assert all(a["data"] == str(a["seq_no"]) for _, a in answers)
    finally:
        executor.stop()
        instance.stop()


def test_bodies_are_refused_at_their_headers(echo):
    """Over the body bound: 413 before a byte of the body is sent; no Content-Length
    (a chunked body): 411. Both one-line JSON errors."""
    import socket

    def raw(headers: str, body: bytes = b"") -> tuple[int, dict]:
        with socket.create_connection(("127.0.0.1", echo[0]), timeout=10) as s:
            s.sendall(f"POST /v1/blocks/echo/infer HTTP/1.1\r\nHost: x\r\n{headers}\r\n"
                      .encode() + body)  # fmt: skip
            reply = b""
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        head, _, rest = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(rest[rest.index(b"{") : rest.rindex(b"}") + 1])

    status, out = raw("Content-Type: application/json\r\nContent-Length: 999999999\r\n")
    assert status == 413 and out["code"] == "RESOURCE_EXHAUSTED"
    status, out = raw(
        "Transfer-Encoding: chunked\r\nConnection: close\r\n", b"2\r\n{}\r\n0\r\n\r\n"
    )
    assert status == 411 and "Content-Length" in out["error"]


def test_fuzzed_requests_get_answers_the_openapi_document_describes(echo):
    """schemathesis sends what the document allows (and mutations of it): every answer is
    JSON with a status and a body the document lists; no server error but the two
    below."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    from aios_fast.executor.http_front import openapi

    schema = schemathesis.openapi.from_dict(openapi("echo"))
    operation = schema["/v1/blocks/{id}/infer"]["POST"]

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call(base_url=f"http://127.0.0.1:{echo[0]}")
        checks = [status_code_conformance, response_schema_conformance]
        # 504: a deadline so short it passed. 500 naming output_ptr: the instance ran the
        # task and could not follow the caller's output_ptr (instance.routing answers
        # INTERNAL, over gRPC alike; the front does not judge the seeds' pointers)
        body = response.json()
        routing = response.status_code == 500 and "output_ptr" in body.get("error", "")
        if response.status_code != 504 and not routing:
            checks.append(not_a_server_error)
        case.validate_response(response, checks=checks)
        assert "error" in body or response.status_code in (200, 202)

    run()


def test_several_workers_need_a_fixed_http_port():
    import subprocess
    import sys

    from .procs import ROOT, free_port

    out = subprocess.run(
        [sys.executable, "-m", "aios_fast.executor", "--port", str(free_port()), "--workers", "2",
         "--http-port", "0", "--mgmt-port", "-1", "--metrics-port", "-1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0
    assert "several workers need a fixed --http-port" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
