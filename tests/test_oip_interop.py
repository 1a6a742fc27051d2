"""The Open Inference Protocol against real processes (an echo instance and an
executor, on each front), spoken by the real, unchanged ``tritonclient.grpc``: health and
metadata, FP32 / INT64 / BYTES tensors, typed contents, ModelStreamInfer with one bad
request failing alone, the protocol's errors (unknown model, shape and datatype
mismatch, raw contents one byte short), a request exactly at the message limit and one
byte over, tokens, and the books; and its REST form on the HTTP port, spoken by the
unchanged ``tritonclient.http`` (JSON and binary tensors) and by a plain HTTP client
(KServe v2 JSON, what ``curl`` sends)."""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from aios_fast.executor.native_front import unavailable

from .procs import mgmt, start_executor, start_instance, wait_stats

LIMIT = 256 * 1024  # the executor's --max-message
TOKEN = "oip-token-" + "z" * 24
DOC = {
    "id": "echo",
    "componentUri": "model.echo:3",
    "initSettings": {"block": "aios_fast.block:EchoBlock"},
    "inputProtocol": {"tensors": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "n", "datatype": "INT64", "shape": [-1]},
        {"name": "s", "datatype": "BYTES", "shape": [-1]}]},
    "outputProtocol": {"tensors": [
        {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "n", "datatype": "INT64", "shape": [-1]},
        {"name": "s", "datatype": "BYTES", "shape": [-1]}]},
}  # fmt: skip
X = np.arange(12, dtype=np.float32).reshape(3, 4)
N = np.array([1, -2, 3 << 40], dtype=np.int64)
S = np.array([b"one", b"", "tr\u00e8s".encode()], dtype=object)


class Served(tuple):
    """(gRPC client, gRPC port, mgmt port), and ``http_port``."""

    def __new__(cls, items: tuple, http_port: int):
        served = super().__new__(cls, items)
        served.http_port = http_port
        return served


def native_or_skip(front: str) -> None:
    if front == "native" and (why := unavailable()):
        pytest.skip(f"native front not available: {why}")


@pytest.fixture(scope="module", params=["native", "grpcio"])
def block(request, tmp_path_factory):
    native_or_skip(request.param)
    path = tmp_path_factory.mktemp("oip") / "echo.json"
    path.write_text(json.dumps(DOC))
    instance = start_instance("aios_fast.block:EchoBlock", None, "--block-doc", str(path))
    executor, port = start_executor({"i0": instance.info["port"]}, "--block-doc", str(path),
                                    "--front", request.param, "--http-port", "0",
                                    "--max-message", str(LIMIT))  # fmt: skip
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    yield Served((client, port, executor.info["mgmt_port"]), executor.info["http_port"])
    client.close()
    executor.stop()
    instance.stop()


def inputs(x=X, n=N, s=S) -> list:
    out = []
    for name, datatype, array in (("x", "FP32", x), ("n", "INT64", n), ("s", "BYTES", s)):
        t = triton.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        out.append(t)
    return out


def raw_call(port: int, request: service_pb2.ModelInferRequest):
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)


def raw_request(x=X, id_="raw") -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="echo", id=id_)
    for name, datatype, array in (("x", "FP32", x), ("n", "INT64", N)):
        req.inputs.add(name=name, datatype=datatype, shape=array.shape)
        req.raw_input_contents.append(array.tobytes())
    req.inputs.add(name="s", datatype="BYTES", shape=[1])
    req.raw_input_contents.append(b"\x01\0\0\0z")
    return req


def test_health_and_metadata_come_from_the_block_document(block):
    client, _, _ = block
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("echo") and client.is_model_ready("echo", "3")
    assert not client.is_model_ready("other")
    meta = client.get_model_metadata("echo", as_json=True)
    assert meta["name"] == "echo" and meta["versions"] == ["3"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("x", "FP32", ["-1", "4"]), ("n", "INT64", ["-1"]), ("s", "BYTES", ["-1"])]  # fmt: skip
    assert client.get_server_metadata(as_json=True)["name"] == "aios-fast"
    # Triton's ModelConfig extension, read by tritonclient's own (full) proto: the
    # declared shapes whole, no implied batch dimension; BYTES is TYPE_STRING there
    config = client.get_model_config("echo", as_json=True)["config"]
    assert config["name"] == "echo" and config.get("max_batch_size", 0) == 0
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("x", "TYPE_FP32", ["-1", "4"]), ("n", "TYPE_INT64", ["-1"]),
        ("s", "TYPE_STRING", ["-1"])]  # fmt: skip
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.get_model_config("other")
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as err:
        client.get_model_metadata("other")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_fp32_int64_and_bytes_tensors_come_back(block):
    client, _, _ = block
    result = client.infer("echo", inputs(), request_id="req-7")
    np.testing.assert_array_equal(result.as_numpy("x"), X)
    np.testing.assert_array_equal(result.as_numpy("n"), N)
    assert result.as_numpy("s").tolist() == S.tolist()
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", "echo", "3")
    only = client.infer("echo", inputs(), outputs=[triton.InferRequestedOutput("n")])
    assert only.as_numpy("x") is None and only.as_numpy("n").tolist() == N.tolist()


def test_typed_contents_are_taken_as_raw_ones(block):
    _, port, _ = block
    req = service_pb2.ModelInferRequest(model_name="echo", id="typed")
    x = req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    x.contents.fp32_contents.extend([0.5, 1.5, 2.5, 3.5])
    n = req.inputs.add(name="n", datatype="INT64", shape=[2])
    n.contents.int64_contents.extend([7, -8])
    s = req.inputs.add(name="s", datatype="BYTES", shape=[1])
    s.contents.bytes_contents.append(b"hi")
    out = raw_call(port, req)
    assert out.id == "typed"
    assert np.frombuffer(out.raw_output_contents[0], np.float32).tolist() == [0.5, 1.5, 2.5, 3.5]
    assert np.frombuffer(out.raw_output_contents[1], np.int64).tolist() == [7, -8]


@pytest.mark.parametrize("case, code, message", [
    ("shape", "INVALID_ARGUMENT", "input 'x': shape [3, 3], expected [-1, 4]"),
    ("datatype", "INVALID_ARGUMENT", "input 'x': datatype FP64, expected FP32"),
    ("short", "INVALID_ARGUMENT", "raw contents hold 47 bytes; FP32 [3, 4] needs 48"),
    ("model", "NOT_FOUND", "unknown model 'nope'"),
    ("version", "NOT_FOUND", "model 'echo' has no version '9'"),
])  # fmt: skip
def test_bad_tensors_get_the_protocols_errors(block, case, code, message):
    _, port, _ = block
    req = raw_request()
    if case == "shape":
        req.inputs[0].shape[:] = [3, 3]
        req.raw_input_contents[0] = X[:, :3].tobytes()
    elif case == "datatype":
        req.inputs[0].datatype = "FP64"
    elif case == "short":
        req.raw_input_contents[0] = req.raw_input_contents[0][:-1]
    elif case == "model":
        req.model_name = "nope"
    else:
        req.model_version = "9"
    with pytest.raises(grpc.RpcError) as err:
        raw_call(port, req)
    assert err.value.code().name == code
    assert message in err.value.details()


def test_the_stream_answers_each_request_and_a_bad_one_fails_alone(block):
    client, _, _ = block
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("echo", inputs(), request_id="a")
        bad = inputs()
        bad[0] = triton.InferInput("x", [3, 3], "FP32")
        bad[0].set_data_from_numpy(X[:, :3].copy())
        client.async_stream_infer("echo", bad, request_id="b")
        client.async_stream_infer("echo", inputs(x=X * 2), request_id="c")
        got = [answers.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()
    ok = {r.get_response().id: r for r, e in got if e is None}
    errors = [e for r, e in got if e is not None]
    assert set(ok) == {"a", "c"}
    np.testing.assert_array_equal(ok["c"].as_numpy("x"), X * 2)
    assert len(errors) == 1 and "shape [3, 3], expected [-1, 4]" in errors[0].message()


def test_a_request_at_the_limit_passes_and_one_byte_over_is_refused(block):
    _, port, _ = block
    rows = (LIMIT - 200) // 16
    req = raw_request(np.zeros((rows, 4), np.float32), id_="")
    req.outputs.add(name="n")  # a small answer: the request alone is at the limit
    req.id = "p" * (LIMIT - req.ByteSize())
    if req.ByteSize() != LIMIT:  # (the id's length prefix grew by a byte)
        req.id = req.id[: len(req.id) - (req.ByteSize() - LIMIT)]
    assert req.ByteSize() == LIMIT
    assert raw_call(port, req).id == req.id
    req.id += "p"
    with pytest.raises(grpc.RpcError) as err:
        raw_call(port, req)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_books_hold_for_oip_tasks(block):
    _, port, mgmt_port = block

    def settled() -> dict:
        end = time.monotonic() + 10
        while True:
            data = mgmt(mgmt_port, "stats")[1]["data"]
            if data["inflight"] == 0 or time.monotonic() > end:
                return data["tasks"]
            time.sleep(0.05)

    before = settled()
    assert raw_call(port, raw_request()).id == "raw"
    for change in ({"model_name": "nope"}, {"id": "bad"}):
        req = raw_request()
        for key, value in change.items():
            setattr(req, key, value)
        if change.get("id") == "bad":
            req.raw_input_contents[0] = b"short"
        with pytest.raises(grpc.RpcError):
            raw_call(port, req)
    t = settled()
    assert t["received"] == t["invalid"] + t["rejected"] + t["withdrawn"] + t["accepted"]
    assert t["accepted"] == t["completed"] + t["failed"] + t["lost"] + t["cancelled"]
    grew = {k: t[k] - before[k] for k in ("received", "invalid", "completed", "failed", "lost")}
    # the unknown model is refused at the executor; the bad tensors fail at the instance
    assert grew == {"received": 3, "invalid": 1, "completed": 1, "failed": 1, "lost": 0}


def test_tls_serves_the_protocol_with_client_certificates(tmp_path):
    """The OIP methods live on the executor's own port: its TLS (here mutual) holds."""
    from .procs import Proc, free_port
    from .tlsutil import make_pki

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki", ("node", "client"))
    (cert, key), ca = pki["node"], pki["ca"][0]
    tls = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", ca)
    doc = tmp_path / "echo.json"
    doc.write_text(json.dumps(DOC))
    instance = start_instance("aios_fast.block:EchoBlock", None, "--block-doc", str(doc), *tls)
    executor = Proc(["-m", "aios_fast.executor", "--port", str(free_port()), "--mgmt-port", "0",
                     "--metrics-port", "0", "--block-doc", str(doc), *tls, "--instance",
                     f"i0=127.0.0.1:{instance.info['port']}"])  # fmt: skip
    client_cert, client_key = pki["client"]
    client = triton.InferenceServerClient(
        f"127.0.0.1:{executor.info['port']}", ssl=True, root_certificates=ca,
        private_key=client_key, certificate_chain=client_cert,
    )  # fmt: skip
    plain = triton.InferenceServerClient(f"127.0.0.1:{executor.info['port']}")
    try:
        end = time.monotonic() + 20
        while not client.is_server_ready() and time.monotonic() < end:  # the TLS link
            time.sleep(0.1)
        np.testing.assert_array_equal(client.infer("echo", inputs()).as_numpy("x"), X)
        with pytest.raises(InferenceServerException):
            plain.is_server_live()
    finally:
        client.close()
        plain.close()
        executor.stop()
        instance.stop()


def test_a_token_is_needed_on_every_oip_method(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"infer {TOKEN}\n")
    doc = tmp_path / "echo.json"
    doc.write_text(json.dumps(DOC))
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", str(path),
                              "--block-doc", str(doc))  # fmt: skip
    executor, port = start_executor({"i0": instance.info["port"]}, "--block-doc", str(doc),
                                    "--auth-file", str(path), "--http-port", "0",
                                    token=TOKEN)  # fmt: skip
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        http_port = executor.info["http_port"]
        for path_ in ("/v2/health/live", "/v2/models/echo"):
            status, _, body = rest(http_port, path_)
            assert status == 401 and json.loads(body)["code"] == "UNAUTHENTICATED"
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, _, body = rest(http_port, "/v2/models/echo/infer", {"inputs": json_inputs()},
                               bearer)  # fmt: skip
        assert status == 200, body
        with pytest.raises(InferenceServerException) as err:
            client.get_model_metadata("echo")
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as err:
            client.infer("echo", inputs())
        assert err.value.status() == "StatusCode.UNAUTHENTICATED"
        headers = {"authorization": f"Bearer {TOKEN}"}
        result = client.infer("echo", inputs(), headers=headers)
        np.testing.assert_array_equal(result.as_numpy("x"), X)
    finally:
        client.close()
        executor.stop()
        instance.stop()


# ---------------------------------------------------------------------- REST


def rest(port: int, path: str, body: dict | bytes | None = None, headers=None):
    """(status, headers, body) of one request (what curl does)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def json_inputs() -> list[dict]:
    return [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.tolist()},
            {"name": "n", "datatype": "INT64", "shape": [3], "data": N.tolist()},
            {"name": "s", "datatype": "BYTES", "shape": [3],
             "data": ["one", "", "tr\u00e8s"]}]  # fmt: skip


def test_rest_health_metadata_and_json_tensors_as_curl_sends_them(block):
    port = block.http_port
    assert rest(port, "/v2/health/live")[0] == 200
    status, _, body = rest(port, "/v2/health/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})
    meta = json.loads(rest(port, "/v2/models/echo/versions/3")[2])
    assert meta["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    config = json.loads(rest(port, "/v2/models/echo/config")[2])
    assert config["input"][0] == {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4]}
    assert config["max_batch_size"] == 0 and config["output"][2]["data_type"] == "TYPE_STRING"
    assert rest(port, "/v2/models/other/config")[0] == 404
    assert rest(port, "/v2/models/echo/ready")[0] == 200
    status, headers, body = rest(port, "/v2/models/echo/infer",
                                 {"id": "j1", "inputs": json_inputs()})  # fmt: skip
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    out = json.loads(body)
    assert (out["id"], out["model_name"], out["model_version"]) == ("j1", "echo", "3")
    by_name = {o["name"]: o for o in out["outputs"]}
    assert by_name["x"] == {"name": "x", "datatype": "FP32", "shape": [3, 4],
                            "data": X.reshape(-1).tolist()}  # fmt: skip
    assert by_name["n"]["data"] == N.tolist() and by_name["s"]["data"] == ["one", "", "tr\u00e8s"]


@pytest.mark.parametrize("case, status, message", [
    ("shape", 400, "input 'x': shape [4, 3], expected [-1, 4]"),
    ("count", 400, "input 'n': data holds 2 values; [3] needs 3"),
    ("json", 400, "bad inference request"),
    ("model", 404, "unknown model 'nope'"),
])  # fmt: skip
def test_rest_bad_requests_get_the_protocols_errors(block, case, status, message):
    port = block.http_port
    body: dict | bytes = {"inputs": json_inputs()}
    path = "/v2/models/echo/infer"
    if case == "shape":
        body["inputs"][0]["shape"] = [4, 3]  # type: ignore[index]
    elif case == "count":
        body["inputs"][1]["data"] = [1, 2]  # type: ignore[index]
    elif case == "json":
        body = b'{"inputs": [{"name": "x"'
    else:
        path = "/v2/models/nope/infer"
    got, _, answer = rest(port, path, body)
    assert got == status and message in json.loads(answer)["error"]


def test_rest_body_at_the_limit_passes_and_one_byte_over_is_refused(block):
    port = block.http_port
    n = np.array([1], np.int64)
    head = {"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [0, 4], "parameters": {"binary_data_size": 0}},
        {"name": "n", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}},
        {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 0}},
    ], "outputs": [{"name": "n"}]}  # fmt: skip
    header = json.dumps(head).encode()
    limit = LIMIT - 4  # the body's limit: the message limit less the task's framing
    # pad the BYTES element so the body is exactly at the limit
    pad = limit - len(header) - 8 - 4 - 40
    head["inputs"][2]["parameters"]["binary_data_size"] = pad + 4  # type: ignore[index]
    header = json.dumps(head).encode()
    pad = limit - len(header) - 8 - 4
    head["inputs"][2]["parameters"]["binary_data_size"] = pad + 4  # type: ignore[index]
    header = json.dumps(head).encode()
    body = header + n.tobytes() + pad.to_bytes(4, "little") + b"p" * pad
    assert len(body) == limit
    status, _, answer = rest(port, "/v2/models/echo/infer", body,
                             {"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert status == 200, answer
    assert json.loads(answer)["outputs"][0]["data"] == [1]
    status, _, answer = rest(port, "/v2/models/echo/infer", body + b"p",
                             {"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert status == 413 and "over the" in json.loads(answer)["error"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_json_and_binary_tensors(block, binary):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{block.http_port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("echo")
        assert client.get_model_metadata("echo")["versions"] == ["3"]
        ins = []
        for name, datatype, array in (("x", "FP32", X), ("n", "INT64", N), ("s", "BYTES", S)):
            t = triton_http.InferInput(name, list(array.shape), datatype)
            t.set_data_from_numpy(array, binary_data=binary)
            ins.append(t)
        outs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in ("x", "n", "s")]
        result = client.infer("echo", ins, outputs=outs, request_id="h1")
        np.testing.assert_array_equal(result.as_numpy("x"), X)
        np.testing.assert_array_equal(result.as_numpy("n"), N)
        assert [bytes(v) if not isinstance(v, str) else v.encode()
                for v in result.as_numpy("s").tolist()] == S.tolist()  # fmt: skip
        assert result.get_response()["id"] == "h1"
        with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
            client.infer("nope", ins)
    finally:
        client.close()


# ---------------------------------------------------------------------- deadlines, drain


def test_without_an_instance_nothing_is_ready_and_inference_is_unavailable(tmp_path):
    doc = tmp_path / "echo.json"
    doc.write_text(json.dumps(DOC))
    executor, port = start_executor({}, "--block-doc", str(doc), "--http-port", "0")
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert client.is_server_live()
        assert not client.is_server_ready() and not client.is_model_ready("echo")
        with pytest.raises(InferenceServerException, match="no instance available") as err:
            client.infer("echo", inputs())
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        status, _, body = rest(executor.info["http_port"], "/v2/models/echo/infer",
                               {"inputs": json_inputs()})  # fmt: skip
        assert status == 503 and "no instance available" in json.loads(body)["error"]
        assert rest(executor.info["http_port"], "/v2/health/ready")[0] == 503
        t = mgmt(executor.info["mgmt_port"], "stats")[1]["data"]["tasks"]
        assert t["received"] == t["rejected"] == 2  # counted, refused, none lost
    finally:
        client.close()
        executor.stop()


@pytest.mark.parametrize("front", ["native", "grpcio"])
def test_a_deadline_cancels_the_task_and_drain_lets_running_ones_finish(tmp_path, front):
    native_or_skip(front)
    doc = tmp_path / "slow.json"
    doc.write_text(json.dumps({**DOC, "id": "slow"}))
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 1.0}, "--block-doc", str(doc))
    executor, port = start_executor({"i0": instance.info["port"]}, "--block-doc", str(doc),
                                    "--front", front)  # fmt: skip
    mgmt_port = executor.info["mgmt_port"]
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer("slow", inputs(), client_timeout=0.3)
        assert "DEADLINE_EXCEEDED" in err.value.status() or "Deadline" in str(err.value)
        # the instance was told: nothing stays in flight, and the books say cancelled
        end = time.monotonic() + 5
        while mgmt(mgmt_port, "stats")[1]["data"]["inflight"] and time.monotonic() < end:
            time.sleep(0.05)
        t = mgmt(mgmt_port, "stats")[1]["data"]["tasks"]
        assert t["cancelled"] + t["withdrawn"] == 1 and t["failed"] == 0
        # drain: a task running when the executor is told to stop still gets its answer
        answers: queue.Queue = queue.Queue()
        client.async_infer(
            "slow", inputs(), callback=lambda result, error: answers.put((result, error))
        )
        wait_stats(mgmt_port, lambda _, inflight: inflight == 1)  # it runs: now stop
        executor.signal()
        result, error = answers.get(timeout=15)
        assert error is None, error
        np.testing.assert_array_equal(result.as_numpy("x"), X)
        assert executor.stop() == 0
    finally:
        client.close()
        executor.stop()
        instance.stop()


def test_the_guides_oip_curl_example_runs(tmp_path):
    """docs/writing-a-block.md's /v2 curl commands, as written (ports aside), against an
    echo block declared as the guide's ``digits``."""
    import re
    import subprocess

    from .procs import ROOT

    guide = (ROOT / "docs" / "writing-a-block.md").read_text()
    (command,) = [b for b in re.findall(r"```sh\n(.*?)```", guide, re.S) if "/v2/" in b]
    (declared,) = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", guide, re.S)
                   if "inputProtocol" in b]  # fmt: skip
    doc = tmp_path / "digits.json"
    doc.write_text(json.dumps({**declared, "outputProtocol": declared["inputProtocol"]}))
    instance = start_instance("aios_fast.block:EchoBlock", None, "--block-doc", str(doc))
    executor, _ = start_executor({"i0": instance.info["port"]}, "--block-doc", str(doc),
                                 "--http-port", "0")  # fmt: skip
    try:
        command = command.replace(":18080/", f":{executor.info['http_port']}/")
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        decoder, text, answers = json.JSONDecoder(), out.stdout.strip(), []
        while text:
            answer, end = decoder.raw_decode(text)
            answers.append(answer)
            text = text[end:].strip()
        metadata, inference = answers
        assert metadata["name"] == "digits" and metadata["inputs"][0]["name"] == "pixels"
        assert inference["outputs"][0]["shape"] == [1, 64], inference
    finally:
        executor.stop()
        instance.stop()
