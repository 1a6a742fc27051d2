"""aios_fast.client against real processes (an executor and echo instances): results,
streaming, tokens, message limits at the byte, deadlines, which UNAVAILABLE failures
are retried (no instance could have run the task) and which are not (lost after
acceptance), 1,000 concurrent calls, and the guide's example."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time

import grpc
import pytest

from aios_fast import client as aios_client
from aios_fast import codec
from aios_fast.block import Block
from aios_fast.client import (
    AsyncClient,
    Client,
    ClientError,
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    fields,
    retry_safe,
)
from aios_fast.wire import INFER, INFER_RESULT

from .procs import ROOT, Proc, free_port, start_executor, start_instance, wait_stats

TOKEN = "client-test-token-" + "x" * 20


class DoublingBlock(Block):
    """Answers twice its data: an output larger than its task."""

    inline = True

    def on_data(self, entry):
        return entry.data * 2


@pytest.fixture(scope="module")
def echo():
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]})
    yield f"127.0.0.1:{port}"
    executor.stop()
    instance.stop()


def sized_frame(size: int, seq_no: int = 1) -> bytes:
    """An InferenceMessage of exactly ``size`` bytes."""
    pad = size
    for _ in range(8):
        frame = codec.encode_message(codec.Packet(session_id="big", seq_no=seq_no, data="x" * pad))
        if len(frame) == size:
            return frame
        pad -= len(frame) - size
    raise AssertionError(f"no frame of {size} bytes")


# ------------------------------------------------------------------------------ unit


def test_retry_safe_names_exactly_the_failures_no_instance_can_have_run():
    u = grpc.StatusCode.UNAVAILABLE
    assert retry_safe(u, "no instance available")
    assert retry_safe(u, "no instance accepted the task: instance i0 is down")
    assert retry_safe(u, "the executor is stopping; retry")
    assert retry_safe(u, "failed to connect to all addresses; last error: UNKNOWN: refused")
    assert not retry_safe(u, "accepted by i0, then its link broke")  # lost
    assert not retry_safe(u, "Socket closed")  # a call broken mid-way may have run
    assert not retry_safe(grpc.StatusCode.RESOURCE_EXHAUSTED, "no instance available")
    assert not retry_safe(grpc.StatusCode.INTERNAL, "no instance available")


def test_errors_are_typed_one_line_and_carry_the_status():
    exc = Unavailable(grpc.StatusCode.UNAVAILABLE, "accepted by i0,\nthen lost")
    assert isinstance(exc, ClientError)
    assert str(exc) == "UNAVAILABLE: accepted by i0, then lost"
    assert exc.code == grpc.StatusCode.UNAVAILABLE and not exc.retry_safe
    packet = codec.decode_packet(
        codec.encode_packet(
            codec.Packet(session_id="s", seq_no=7,
                         data='{"aios_error": {"code": "INTERNAL", "message": "boom"}}')
        )
    )  # fmt: skip
    err = aios_client.error_of(packet)
    assert isinstance(err, aios_client.Internal)
    assert (err.session_id, err.seq_no, err.message) == ("s", 7, "boom")


# ------------------------------------------------------------------------------ calls


def test_sync_client_runs_tasks_and_gives_plain_fields(echo):
    with Client(echo) as c:
        out = c.infer_result(data='{"a": 1}', session_id="s1", seq_no=5,
                             files=[('{"name": "f"}', b"\x00\x01")])  # fmt: skip
        assert (out.session_id, out.seq_no, out.data) == ("s1", 5, '{"a": 1}')
        plain = fields(out)
        assert plain["data"] == '{"a": 1}' and isinstance(plain["frame_ptr"], bytes)
        assert c.infer(data="{}", session_id="s1", seq_no=6) is True
        packet = codec.Packet(session_id="p", seq_no=9, data="raw")
        assert c.infer_result(packet).data == "raw"
        assert codec.decode_message(c.call(INFER_RESULT, codec.encode_message(packet))).seq_no == 9


def test_stream_answers_every_task_and_a_bad_one_fails_alone(echo):
    packets = [codec.Packet(session_id="st", seq_no=i, data=str(i)) for i in range(200)]
    with Client(echo) as c:
        answers = list(c.stream([*packets[:100], b"\xff\xff", *packets[100:]]))
    assert len(answers) == 201
    errors = [a for a in answers if isinstance(a, ClientError)]
    assert len(errors) == 1 and isinstance(errors[0], InvalidArgument)
    ok = [a for a in answers if not isinstance(a, ClientError)]
    assert sorted(a.seq_no for a in ok) == list(range(200))
    assert all(a.data == str(a.seq_no) for a in ok)


def test_async_stream_takes_an_async_iterable(echo):
    async def run():
        async def gen():
            for i in range(50):
                yield codec.Packet(session_id="as", seq_no=i, data=str(i))

        async with AsyncClient(echo) as c:
            return [a async for a in c.stream(gen())]

    answers = asyncio.run(run())
    assert sorted(a.seq_no for a in answers) == list(range(50))


def test_a_thousand_concurrent_calls_through_the_async_client(echo):
    async def run():
        async with AsyncClient(echo) as c:
            return await asyncio.gather(
                *(c.infer_result(session_id=f"c{i % 7}", seq_no=i, data=str(i))
                  for i in range(1000))
            )  # fmt: skip

    outs = asyncio.run(run())
    assert [o.seq_no for o in outs] == list(range(1000))
    assert all(o.data == str(o.seq_no) for o in outs)


# ------------------------------------------------------------------------------ limits


def test_client_message_limit_at_and_just_over(echo):
    limit = 64 * 1024
    with Client(echo, max_message=limit, retries=3) as c:
        assert c.infer(sized_frame(limit)) is True
        with pytest.raises(ResourceExhausted) as info:
            c.infer(sized_frame(limit + 1))
        assert c.retried == 0
    assert "\n" not in str(info.value)


def test_the_client_limit_bounds_answers_too():
    limit = 64 * 1024
    instance = start_instance("tests.test_client:DoublingBlock")
    executor, port = start_executor({"i0": instance.info["port"]})
    try:
        with Client(f"127.0.0.1:{port}", max_message=limit, retries=3) as c:
            assert c.infer_result(data="x" * (limit // 4)).data == "x" * (limit // 2)
            with pytest.raises(ResourceExhausted):  # a task under the limit, its answer over
                c.infer_result(data="x" * (limit // 2 + 100))
            assert c.retried == 0
    finally:
        executor.stop()
        instance.stop()


def test_executor_message_limit_at_and_just_over():
    limit = 32 * 1024
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]}, "--max-message", str(limit))
    try:
        with Client(f"127.0.0.1:{port}", max_message=4 * limit) as c:
            assert c.infer(sized_frame(limit)) is True
            with pytest.raises(ResourceExhausted):
                c.infer(sized_frame(limit + 1))
            assert c.retried == 0
    finally:
        executor.stop()
        instance.stop()


def test_a_deadline_that_passes_is_deadline_exceeded_and_not_retried():
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 2.0})
    executor, port = start_executor({"i0": instance.info["port"]})
    try:
        with Client(f"127.0.0.1:{port}", timeout=0.3) as c:
            with pytest.raises(DeadlineExceeded):
                c.infer_result(data="{}")
            assert c.retried == 0
            assert c.infer_result(data="late", timeout=10).data == "late"  # per call
            with pytest.raises(DeadlineExceeded):  # a stream's timeout bounds it whole
                list(c.stream([{"data": "s"}], timeout=0.3))
            assert [a.data for a in c.stream([{"data": "s"}])] == ["s"]  # none by default

        async def run():
            async with AsyncClient(f"127.0.0.1:{port}") as c:
                with pytest.raises(DeadlineExceeded):
                    await c.infer_result(data="{}", timeout=0.3)

        asyncio.run(run())
    finally:
        executor.stop()
        instance.stop()


# ------------------------------------------------------------------------------ retries


def test_no_instance_is_retried_then_unavailable():
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]})
    instance.stop()
    time.sleep(0.5)
    try:
        with Client(f"127.0.0.1:{port}", retries=3, backoff=0.01) as c:
            with pytest.raises(Unavailable) as info:
                c.infer_result(data="{}")
            assert info.value.retry_safe
            assert c.retried == 3

        async def run():
            async with AsyncClient(f"127.0.0.1:{port}", retries=2, backoff=0.01) as c:
                with pytest.raises(Unavailable):
                    await c.infer(data="{}")
                return c.retried

        assert asyncio.run(run()) == 2
    finally:
        executor.stop()


def test_unavailable_before_any_instance_succeeds_once_one_comes():
    """Nothing listens yet: the client retries (no connection, nothing can have run)
    until the executor is up within the deadline."""
    port = free_port()
    box: dict = {}

    def call():
        with Client(f"127.0.0.1:{port}", retries=100, backoff=0.05, max_backoff=0.2,
                    timeout=60) as c:  # fmt: skip
            try:
                box["out"] = c.infer_result(data="eventually")
            except ClientError as exc:
                box["out"] = exc
            box["retried"] = c.retried

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)
    instance = start_instance()
    executor, _ = start_executor({"i0": instance.info["port"]}, port=port)
    try:
        thread.join(60)
        assert not isinstance(box["out"], ClientError), box["out"]
        assert box["out"].data == "eventually" and box["retried"] >= 1
    finally:
        executor.stop()
        instance.stop()


def test_a_task_lost_after_acceptance_is_not_retried():
    instance = start_instance("tests.blocks:HangBlock")
    spare = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]}, "--max-retries", "0")
    box: dict = {}

    def call():
        with Client(f"127.0.0.1:{port}", retries=5, backoff=0.01, timeout=30) as c:
            try:
                c.infer_result(data="{}")
            except ClientError as exc:
                box["error"] = exc
            box["retried"] = c.retried

    try:
        thread = threading.Thread(target=call)
        thread.start()
        # the hanging instance took it (start_executor's probe, an infer, was the first)
        wait_stats(executor.info["mgmt_port"], lambda tasks, _: tasks["accepted"] >= 2)
        instance.p.kill()
        thread.join(30)
        error = box["error"]
        assert isinstance(error, Unavailable) and not error.retry_safe
        assert "accepted by i0" in error.message
        assert box["retried"] == 0
    finally:
        executor.stop()
        instance.stop()
        spare.stop()


# ------------------------------------------------------------------------------ tokens


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(f"infer {TOKEN}\n")
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", str(path))
    executor, port = start_executor({"i0": instance.info["port"]}, "--auth-file", str(path),
                                    token=TOKEN)  # fmt: skip
    yield f"127.0.0.1:{port}"
    executor.stop()
    instance.stop()


def test_tokens_explicit_from_the_environment_and_refused(guarded, monkeypatch):
    monkeypatch.delenv("AIOS_FAST_TOKEN", raising=False)
    with Client(guarded, token=TOKEN) as c:
        assert c.infer_result(data="ok").data == "ok"
    with Client(guarded, token="wrong-token-" + "y" * 20, retries=3) as c:
        with pytest.raises(Unauthenticated):
            c.infer_result(data="{}")
        with pytest.raises(Unauthenticated):
            list(c.stream([codec.Packet(data="{}")]))
        assert c.retried == 0
    with Client(guarded, token="") as c, pytest.raises(Unauthenticated):
        c.infer(data="{}")
    monkeypatch.setenv("AIOS_FAST_TOKEN", TOKEN)
    with Client(guarded) as c:
        assert c.call(INFER, codec.encode_message(codec.Packet(data="{}"))) == b"\x08\x01"


# ------------------------------------------------------------------------------ the guide


def test_the_guides_client_example_runs(echo):
    guide = (ROOT / "docs" / "writing-a-block.md").read_text()
    (source,) = [b for b in re.findall(r"```py\n(.*?)```", guide, re.S) if "aios_fast.client" in b]
    env = dict(os.environ, PYTHONPATH=str(ROOT), AIOS_FAST_TARGET=echo)
    out = subprocess.run([sys.executable, "-c", source], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hello" in out.stdout


# ------------------------------------------------------------------------------ TLS


def test_mutual_tls_for_the_client_and_the_http_front(tmp_path):
    """An executor and instance serving mutual TLS: the client with a certificate and the
    CA gets through (retrying, nothing run, until the instance's link is up); one
    without a certificate does not. The HTTP/JSON front speaks the same TLS."""
    import json
    import ssl
    import urllib.request

    from aios_fast.tls import TLS

    from .tlsutil import make_pki

    pki = make_pki(tmp_path, ("node", "client"))
    (cert, key), (ca, _) = pki["node"], pki["ca"]
    tls_args = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", ca)
    instance = start_instance("aios_fast.block:EchoBlock", None, *tls_args)
    executor = Proc(["-m", "aios_fast.executor", "--port", str(free_port()), "--workers", "1",
                     "--mgmt-port", "0", "--metrics-port", "0", "--http-port", "0",
                     "--block-id", "b", *tls_args, "--instance",
                     f"i=127.0.0.1:{instance.info['port']}@127.0.0.1:"
                     f"{instance.info['mgmt_port']}"])  # fmt: skip
    target = f"127.0.0.1:{executor.info['port']}"
    try:
        tls = TLS(*pki["client"], ca)
        with Client(target, tls=tls, retries=200, backoff=0.05, max_backoff=0.1) as c:
            assert c.infer_result(data="secret").data == "secret"
        with Client(target, tls=TLS(ca=ca), retries=0, timeout=5) as c:
            with pytest.raises(Unavailable):
                c.infer_result(data="no certificate")
        req = urllib.request.Request(
            f"https://127.0.0.1:{executor.info['http_port']}/v1/blocks/b/infer",
            data=json.dumps({"data": "over https"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        context = tls.client_context()
        assert isinstance(context, ssl.SSLContext)
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            assert json.loads(resp.read())["data"] == "over https"
    finally:
        executor.stop()
        instance.stop()
