"""The executor's gRPC front, both of them (``--front grpcio`` and ``--front native``),
against real clients: grpcio (sync and aio), a raw HTTP/2 client (h2) and h2load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from aios_fast import codec
from aios_fast.executor.native_front import unavailable

from .procs import frame, mgmt, start_executor, start_instance

MiB = 1024 * 1024
LIMIT = 17 * MiB  # the executors' --max-message: 16 MiB messages pass, 18 MiB do not


@pytest.fixture(scope="module", params=["grpcio", "native"])
def front(request):
    if request.param == "native" and (why := unavailable()):
        pytest.skip(f"native front not available: {why}")
    return request.param


def start(front: str, instances: dict, *extra: str, **kw):
    return start_executor(instances, "--front", front, "--max-message", str(LIMIT), *extra, **kw)


@pytest.fixture(scope="module")
def served(front):
    """An echo instance behind an executor with this front."""
    instance = start_instance("tests.blocks:PacketEchoBlock", None, "--max-message", str(LIMIT))
    executor, port = start(front, {"i0": instance.info["port"]})
    yield port, executor
    executor.stop()
    instance.stop()


@pytest.fixture(scope="module")
def slow(front):
    """An instance that answers after 2 s, behind an executor with this front."""
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 2.0})
    executor, port = start(front, {"i0": instance.info["port"]})
    yield port, executor
    executor.stop()
    instance.stop()


def unary(port: int, method: str, body: bytes, timeout: float = 10.0, **kw) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=_big()) as ch:
        return ch.unary_unary(f"/InferenceProxy/{method}")(body, timeout=timeout, **kw)


def code_of(port: int, method: str, body: bytes, **kw) -> tuple[grpc.StatusCode, str]:
    try:
        unary(port, method, body, **kw)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def _big() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", 64 * MiB),
            ("grpc.max_send_message_length", 64 * MiB)]  # fmt: skip


def test_unary_calls_sync_and_aio(served):
    port, _ = served
    assert unary(port, "infer", frame()) == b"\x08\x01"
    out = codec.decode_message(unary(port, "infer_result", frame("s", 7, '{"x": "é✓"}')))
    assert (out.session_id, out.seq_no, out.data) == ("s", 7, '{"x": "é✓"}')

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            return await asyncio.gather(*[rpc(frame("a", i, str(i)), timeout=20)
                                          for i in range(300)])  # fmt: skip

    outs = [codec.decode_message(o) for o in asyncio.run(run())]
    assert [(o.seq_no, o.data) for o in outs] == [(i, str(i)) for i in range(300)]


def test_infer_stream_answers_every_task_and_fails_bad_ones_alone(served):
    port, _ = served

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stream = ch.stream_stream("/InferenceProxy/infer_stream")

            async def gen():
                for i in range(200):
                    yield frame("st", i, str(i)) if i != 50 else b"\xff"

            return [codec.decode_message(m) async for m in stream(gen(), timeout=20)]

    outs = asyncio.run(run())
    assert len(outs) == 200
    errors = [o for o in outs if o.data.startswith('{"aios_error"')]
    assert sorted(o.seq_no for o in outs if o not in errors) == [i for i in range(200) if i != 50]
    assert len(errors) == 1 and "INVALID_ARGUMENT" in errors[0].data
    # and the sync client
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stream = ch.stream_stream("/InferenceProxy/infer_stream")
        outs = list(stream(iter([frame("sy", i) for i in range(20)]), timeout=20))
    assert sorted(codec.decode_message(o).seq_no for o in outs) == list(range(20))


def test_status_codes_and_messages(served):
    port, _ = served
    code, details = code_of(port, "infer_result", b"\x0a\x05ab")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "malformed packet" in details
    assert code_of(port, "nope", b"")[0] == grpc.StatusCode.UNIMPLEMENTED
    assert code_of(port, "infer_result", frame(data="ok"))[0] == grpc.StatusCode.OK


def test_message_size_limit_and_16_mib_messages(served):
    port, _ = served
    blob = os.urandom(16 * MiB)
    big = codec.encode_message(codec.Packet(session_id="big", seq_no=1, data="d",
                                            files=[codec.FileInfo("{}", blob)]))  # fmt: skip
    out = codec.decode_message(unary(port, "infer_result", big, timeout=60))
    assert out.files[0].file_data == blob
    code, details = code_of(port, "infer_result", b"\0" * (LIMIT + MiB), timeout=60)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert code_of(port, "infer_result", frame(data="ok"))[0] == grpc.StatusCode.OK


def test_flow_control_with_a_slow_reader(served):
    """Three 16 MiB answers on one stream, read slowly: each arrives whole."""
    port, _ = served
    blobs = [bytes([i]) * (16 * MiB) for i in range(3)]

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_big()) as ch:
            stream = ch.stream_stream("/InferenceProxy/infer_stream")

            async def gen():
                for i, blob in enumerate(blobs):
                    yield codec.encode_message(codec.Packet(seq_no=i, files=[
                        codec.FileInfo("{}", blob)]))  # fmt: skip

            got = []
            async for message in stream(gen(), timeout=120):
                await asyncio.sleep(0.5)  # a slow reader: the window fills up meanwhile
                got.append(codec.decode_message(message))
            return got

    got = sorted(asyncio.run(run()), key=lambda p: p.seq_no)
    assert [p.files[0].file_data == blobs[p.seq_no] for p in got] == [True] * 3


def test_many_streams_on_many_connections(served):
    port, _ = served

    async def one_channel(k: int):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            outs = await asyncio.gather(*[rpc(frame(f"c{k}", i), timeout=30) for i in range(100)])
            return [codec.decode_message(o).seq_no for o in outs]

    async def run():
        return await asyncio.gather(*[one_channel(k) for k in range(8)])

    assert asyncio.run(run()) == [list(range(100))] * 8


def test_deadline_exceeded_cancels_the_task(slow):
    port, executor = slow
    t0 = time.monotonic()
    # 1 s: room for a busy machine to connect and dispatch the call before its deadline
    # (a call whose deadline passes before the executor's handler starts is never
    # received: nothing to count); the block takes 2 s
    code, _ = code_of(port, "infer_result", frame(), timeout=1.0)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.8  # not the block's 2 s
    _wait_stat(executor, "gave_up", 1)


def test_client_cancellation_reaches_the_executor(slow):
    port, executor = slow
    before = _stats(executor)["gave_up"]

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary("/InferenceProxy/infer_result")(frame(), timeout=30)
            await asyncio.sleep(0.3)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(run())
    _wait_stat(executor, "gave_up", before + 1)


def test_a_stream_past_its_deadline_ends_and_its_tasks_are_cancelled(slow):
    port, executor = slow
    before = _stats(executor)["gave_up"]

    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stream = ch.stream_stream("/InferenceProxy/infer_stream")
            call = stream(iter([frame("dl", i) for i in range(5)]), timeout=0.5)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                _ = [m async for m in call]
            return err.value.code()

    t0 = time.monotonic()
    assert asyncio.run(run()) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 1.8  # not the block's 2 s
    _wait_stat(executor, "gave_up", before + 5)


def test_every_received_task_ends_counted_once(front):
    """The executor's books (``stats``) match what callers saw, outcome by outcome:
    completed, failed (the block raised), invalid, cancelled (deadline, client cancel),
    rejected (past --max-inflight); and received is their sum."""
    instance = start_instance("tests.blocks:ControlBlock")
    executor, port = start(front, {"i0": instance.info["port"]}, "--max-inflight", "40")
    try:
        before = _stats(executor)  # the start-up probe

        async def call(rpc, body, timeout=20.0, cancel_after=None):
            try:
                if cancel_after is None:
                    await rpc(body, timeout=timeout)
                    return "OK"
                pending = rpc(body, timeout=timeout)
                await asyncio.sleep(cancel_after)
                pending.cancel()
                await pending
            except asyncio.CancelledError:
                return "CANCELLED"
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"

        async def run():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                rpc = ch.unary_unary("/InferenceProxy/infer_result")
                first = await asyncio.gather(
                    *[call(rpc, frame(data="{}")) for _ in range(20)],
                    *[call(rpc, frame(data='{"fail": true}')) for _ in range(6)],
                    *[call(rpc, b"\xff\x01") for _ in range(5)],
                    *[call(rpc, frame(data='{"sleep": 5}'), timeout=0.3) for _ in range(5)],
                    *[call(rpc, frame(data='{"sleep": 5}'), cancel_after=0.3) for _ in range(4)],
                )  # fmt: skip
                # 50 at once that hold their place 1 s: 40 run, 10 find the executor full
                second = await asyncio.gather(
                    *[call(rpc, frame(data='{"sleep": 1}')) for _ in range(50)]
                )
                return first, second

        first, second = asyncio.run(run())
        seen = {}
        for outcome in first + second:
            seen[outcome] = seen.get(outcome, 0) + 1
        assert seen == {"OK": 60, "INTERNAL": 6, "INVALID_ARGUMENT": 5,
                        "DEADLINE_EXCEEDED": 5, "CANCELLED": 4,
                        "RESOURCE_EXHAUSTED": 10}, seen  # fmt: skip
        _wait_stat(executor, "gave_up", before["gave_up"] + 9)
        tasks = {k: v - before.get(k, 0) for k, v in _stats(executor).items()}
        ends = {k: tasks[k] for k in ("completed", "failed", "invalid", "gave_up",
                                      "rejected", "lost")}  # fmt: skip
        assert ends == {"completed": 60, "failed": 6, "invalid": 5, "gave_up": 9,
                        "rejected": 10, "lost": 0}, tasks  # fmt: skip
        assert tasks["received"] == sum(ends.values()) == 90, tasks
        # the identities the README states, exactly (a task the caller gave up on before
        # an instance acknowledged it is withdrawn, never accepted)
        assert tasks["received"] == (tasks["invalid"] + tasks["rejected"] + tasks["withdrawn"]
                                     + tasks["accepted"]), tasks  # fmt: skip
        assert tasks["accepted"] == (tasks["completed"] + tasks["failed"] + tasks["lost"]
                                     + tasks["cancelled"]), tasks  # fmt: skip
    finally:
        executor.stop()
        instance.stop()


def _stats(executor) -> dict:
    """The executor's task books, plus ``gave_up``: tasks whose callers cancelled or ran
    out of time (withdrawn before an instance acknowledged them, cancelled after)."""
    status, body = mgmt(executor.info["mgmt_port"], "stats")
    assert status == 200
    tasks = body["data"]["tasks"]
    tasks["gave_up"] = tasks["cancelled"] + tasks["withdrawn"]
    return tasks


def _wait_stat(executor, key: str, at_least: int) -> None:
    end = time.monotonic() + 10
    while _stats(executor)[key] < at_least:
        assert time.monotonic() < end, _stats(executor)
        time.sleep(0.05)


# --------------------------------------------------------------------- raw HTTP/2


class RawClient:
    """A bare HTTP/2 client connection (the h2 package)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def events(self, until, timeout: float = 10.0) -> list:
        """Read until ``until(event)`` holds for one event (or the peer closes)."""
        seen = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            data = self.sock.recv(65536)
            if not data:
                return seen
            for event in self.h2.receive_data(data):
                seen.append(event)
                if until(event):
                    self.flush()
                    return seen
            self.flush()
        raise TimeoutError(seen)

    def close(self) -> None:
        self.sock.close()


def grpc_headers(port: int, method: str = "infer_result") -> list[tuple[str, str]]:
    """A gRPC request's HEADERS, for the raw client."""
    return [(":method", "POST"), (":scheme", "http"), (":path", f"/InferenceProxy/{method}"),
            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
            ("te", "trailers")]  # fmt: skip


def grpc_body(message: bytes) -> bytes:
    """One length-prefixed gRPC message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def test_pings_are_answered(served):
    port, _ = served
    client = RawClient(port)
    try:
        for k in range(3):
            client.h2.ping(b"ping%04d" % k)
            client.flush()
            acks = client.events(lambda e: isinstance(e, h2.events.PingAckReceived))
            assert acks[-1].ping_data == b"ping%04d" % k
    finally:
        client.close()


def test_goaway_on_drain(front):
    instance = start_instance()
    executor, port = start(front, {"i0": instance.info["port"]})
    try:
        client = RawClient(port)
        client.events(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        executor.signal(signal.SIGTERM)
        goaway = _goaway(client.sock)
        assert goaway is not None
        if front == "native":  # NO_ERROR: a graceful drain (grpc core, with no call in
            assert goaway[1] == 0  # flight, may close with INTERNAL_ERROR at times)
        client.close()
        assert executor.p.wait(20) == 0
    finally:
        executor.stop()
        instance.stop()


def test_malformed_http2_gets_an_error_and_serving_goes_on(served, front):
    port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
        _goaway(sock)  # answered or closed, not a crash
    client = RawClient(port)
    try:
        client.sock.settimeout(5)
        # a DATA frame on stream 0 is a connection error (PROTOCOL_ERROR)
        client.sock.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        goaway = _goaway(client.sock)
        if front == "native":  # (grpc core may just close)
            assert goaway is not None and goaway[1] == 1, goaway
    finally:
        client.close()
    assert code_of(port, "infer_result", frame(data="ok"))[0] == grpc.StatusCode.OK


def _goaway(sock: socket.socket) -> tuple[int, int] | None:
    """Read frames until a GOAWAY: (last stream id, error code); None if the connection
    closes (or goes quiet) first."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            while len(data) >= 9:
                size = int.from_bytes(data[:3], "big")
                if len(data) < 9 + size:
                    break
                kind, payload, data = data[3], data[9 : 9 + size], data[9 + size :]
                if kind == 7:  # GOAWAY
                    return int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:8], "big")
    except (TimeoutError, ConnectionError):
        pass
    return None


def test_silent_clients_are_pinged_and_cut_and_their_calls_cancelled():
    """Server keepalive (--keepalive / --keepalive-timeout, as grpc servers'): a client
    that answers the PINGs stays connected; one that goes silent with a call in flight
    is cut after the timeout and its task is cancelled at the instance."""
    if why := unavailable():
        pytest.skip(f"native front not available: {why}")
    # (4 s: the silent client's call is still running when it is cut, and the start-up
    # probe's task is over when the executor drains at the end)
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 4.0})
    executor, port = start("native", {"i0": instance.info["port"]},
                           "--keepalive", "0.3", "--keepalive-timeout", "0.4")  # fmt: skip
    try:
        talker = RawClient(port)  # reads, and h2 answers every PING it reads
        silent = RawClient(port)
        sid = silent.h2.get_next_available_stream_id()
        silent.h2.send_headers(sid, grpc_headers(port))
        message = frame(data="slow")
        silent.h2.send_data(sid, grpc_body(message),
                            end_stream=True)  # fmt: skip
        silent.flush()  # from here on it sends nothing, whatever it is sent
        _wait_stat(executor, "accepted", 2)  # the start-up probe's, and its
        pings, end = 0, time.monotonic() + 2.5
        while time.monotonic() < end:
            events = talker.events(lambda e: isinstance(e, h2.events.PingReceived), 5)
            assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
            pings += sum(isinstance(e, h2.events.PingReceived) for e in events)
        assert pings >= 3  # pinged each time it was idle 0.3 s, and never cut
        silent.sock.settimeout(5)
        received = b""
        with pytest.raises(ConnectionError):
            while chunk := silent.sock.recv(65536):  # raw bytes: no PING ACK is sent
                received += chunk
            raise ConnectionResetError("closed")  # a clean close counts as cut too
        assert b"\x00\x00\x08\x06\x00" in received  # it was sent a PING (8 bytes, type 6)
        _wait_stat(executor, "cancelled", 1)  # its call's task, at the instance too
        talker.close()
        silent.close()
    finally:
        executor.stop()
        instance.stop()


def test_many_client_cancellations_do_not_cut_the_connection(served):
    """2,000 calls each reset by the client (RST_STREAM CANCEL, as a grpc client sends
    for a cancel or a missed deadline) on one connection: it stays up and serves (the
    native front raises libnghttp2's rapid-reset limit, 1000 then 33 a second, which
    cut such clients every ~1000 cancellations)."""
    port, _ = served
    client = RawClient(port)
    headers = grpc_headers(port)
    message = frame(data="cancelled")
    body = grpc_body(message)
    try:
        for _ in range(2000):
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, headers)
            client.h2.send_data(sid, body, end_stream=True)
            client.h2.reset_stream(sid, 8)  # CANCEL
        client.flush()
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, headers)
        client.h2.send_data(sid, grpc_body(frame()),
                            end_stream=True)  # fmt: skip
        client.flush()
        events = client.events(lambda e: isinstance(e, h2.events.StreamEnded)
                               and e.stream_id == sid, timeout=30)  # fmt: skip
        assert not any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
        trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)
                    and e.stream_id == sid]  # fmt: skip
        assert trailers and dict(trailers[-1].headers)[b"grpc-status"] == b"0"
    finally:
        client.close()


def test_a_stream_is_slowed_down_not_refused_at_the_instance_limit(front):
    """A lone infer_stream sending more than --instance-inflight tasks at once: its
    window is never more than an instance takes, so every task runs, none is answered
    RESOURCE_EXHAUSTED."""
    instance = start_instance("tests.blocks:ControlBlock")
    executor, port = start(front, {"i0": instance.info["port"]}, "--instance-inflight", "20")
    try:

        async def run():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stream = ch.stream_stream("/InferenceProxy/infer_stream")
                frames = [frame("w", i, '{"sleep": 0.1}') for i in range(80)]
                return [codec.decode_message(m) async for m in stream(iter(frames), timeout=30)]

        outs = asyncio.run(run())
        assert not [o.data for o in outs if o.data.startswith('{"aios_error"')][:3]
        assert sorted(o.seq_no for o in outs) == list(range(80))
    finally:
        executor.stop()
        instance.stop()


def test_a_stream_whose_client_does_not_read_stops_being_run():
    """A client that sends 150 tasks answering 1 MB each on one stream and reads
    nothing: the executor runs only what its first window and answer queue allow (not
    all 150: ~150 MB held), then goes on once the client reads."""
    if why := unavailable():
        pytest.skip(f"native front not available: {why}")
    instance = start_instance("tests.blocks:ControlBlock", None, "--max-message", str(LIMIT))
    executor, port = start("native", {"i0": instance.info["port"]})
    client = RawClient(port)
    try:
        before = _stats(executor)["accepted"]
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, grpc_headers(port, "infer_stream"))
        message = frame(data='{"out_bytes": 1000000}')
        body = grpc_body(message)
        client.h2.increment_flow_control_window(64 * MiB)  # the connection's: stream's stay
        for _ in range(150):
            client.h2.send_data(sid, body)
        client.h2.end_stream(sid)
        client.flush()  # and now it reads nothing
        stalled, last, end = 0, -1, time.monotonic() + 15
        while time.monotonic() < end:  # until the count stops moving for a second
            time.sleep(1.0)
            stalled = _stats(executor)["accepted"] - before
            if stalled == last:
                break
            last = stalled
        assert 0 < stalled <= 110, stalled
        # it reads: once it has taken what waited for it, the stream goes on
        got, next_look, end = 0, 0, time.monotonic() + 60
        while True:
            if got >= next_look:  # the books, every 4 MB read
                if _stats(executor)["accepted"] - before > stalled:
                    break
                next_look = got + 4 * MiB
            assert time.monotonic() < end, f"the stream did not go on ({got:,} bytes read)"
            for event in client.h2.receive_data(client.sock.recv(1 << 20)):
                if isinstance(event, h2.events.DataReceived):
                    got += event.flow_controlled_length
                    client.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            client.flush()
    finally:
        client.close()
        executor.stop()
        instance.stop()


def test_grpc_framing_errors(served, front):
    """A compressed message without an encoding, a truncated message, two messages on a
    unary call: each ends its call with an error status (grpc-status), not a hang."""
    if front == "grpcio":
        pytest.skip("grpc core's own behaviour (it leaves some of these calls hanging)")
    port, _ = served
    good = frame(data="x")
    bodies = {
        "compressed": b"\x01" + len(good).to_bytes(4, "big") + good,
        "truncated": b"\x00" + (len(good) + 10).to_bytes(4, "big") + good,
        "two messages": grpc_body(good) * 2,
    }
    for what, body in bodies.items():
        client = RawClient(port)
        try:
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, grpc_headers(port))
            client.h2.send_data(sid, body, end_stream=True)
            client.flush()
            events = client.events(lambda e: isinstance(e, (h2.events.StreamEnded,
                                                             h2.events.StreamReset)))  # fmt: skip
            headers = dict(kv for e in events if isinstance(e, (h2.events.ResponseReceived,
                           h2.events.TrailersReceived)) for kv in e.headers)  # fmt: skip
            if isinstance(events[-1], h2.events.StreamEnded):
                assert headers[b"grpc-status"] not in (b"0", None), (what, headers)
        finally:
            client.close()


def test_h2load(served, tmp_path):
    if shutil.which("h2load") is None:
        pytest.skip("h2load not installed (Debian: nghttp2-client)")
    port, _ = served
    body = tmp_path / "req"
    message = frame(data="h2load")
    body.write_bytes(grpc_body(message))
    out = subprocess.run(
        ["h2load", "-n", "400", "-c", "2", "-m", "16", "-d", str(body),
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{port}/InferenceProxy/infer_result"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "400 succeeded, 0 failed, 0 errored" in out, out


def test_token_metadata(front, tmp_path):
    tokens = {"infer": "infer-token-" + "x" * 20, "read": "read-token-" + "x" * 20}
    path = tmp_path / "tokens"
    path.write_text("".join(f"{role} {token}\n" for role, token in tokens.items()))
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", str(path))
    executor, port = start(front, {"i0": instance.info}, "--auth-file", str(path),
                           token=tokens["infer"])  # fmt: skip
    try:
        for method in ("infer", "infer_result", "infer_stream"):
            for token, want in ((None, grpc.StatusCode.UNAUTHENTICATED),
                                ("wrong-token-" + "y" * 20, grpc.StatusCode.UNAUTHENTICATED),
                                (tokens["read"], grpc.StatusCode.PERMISSION_DENIED),
                                (tokens["infer"], grpc.StatusCode.OK)):  # fmt: skip
                assert _call_with(port, method, token) == want, (method, token)
    finally:
        executor.stop()
        instance.stop()


def _call_with(port: int, method: str, token: str | None) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            if method == "infer_stream":
                call = ch.stream_stream(f"/InferenceProxy/{method}")
                list(call(iter([frame()]), timeout=10, metadata=metadata))
            else:
                ch.unary_unary(f"/InferenceProxy/{method}")(frame(), timeout=10,
                                                            metadata=metadata)  # fmt: skip
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_tls_with_alpn_h2(front, tmp_path):
    from aios_fast.tls import TLS

    from .tlsutil import make_pki

    pki = make_pki(tmp_path, ("node",))
    (cert, key), (ca, _) = pki["node"], pki["ca"]
    instance = start_instance()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_fast.executor", "--front", front, "--port", "0", "--workers",
         "1", "--mgmt-port", "-1", "--metrics-port", "-1", "--tls-cert", cert, "--tls-key", key,
         "--instance", f"i0=127.0.0.1:{instance.info['port']}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(_root())),
    )  # fmt: skip
    try:
        import json

        port = json.loads(proc.stdout.readline())["port"]
        target = f"127.0.0.1:{port}"
        answer = None
        for _ in range(100):
            with TLS(ca=ca).channel(target) as ch:
                try:
                    answer = ch.unary_unary("/InferenceProxy/infer_result")(
                        frame(data="t"), timeout=5
                    )
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    time.sleep(0.1)
        assert answer is not None and codec.decode_message(answer).data == "t"
        with grpc.insecure_channel(target) as ch:  # plaintext to a TLS port
            with pytest.raises(grpc.RpcError):
                ch.unary_unary("/InferenceProxy/infer_result")(frame(), timeout=3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        instance.stop()


def _root():
    from .procs import ROOT

    return ROOT


def test_several_workers_share_the_port(front):
    instance = start_instance()
    executor, port = start(front, {"i0": instance.info["port"]}, workers=2)
    try:
        assert len(executor.info["workers"]) == 2
        outs = [codec.decode_message(unary(port, "infer_result", frame("w", i))).seq_no
                for i in range(20)]  # fmt: skip
        assert outs == list(range(20))
    finally:
        executor.stop()
        instance.stop()


def test_a_stream_past_its_window_is_answered_whole(front):
    """3,000 tasks on one infer_stream against a slow instance: past 1,024 running the
    stream is held (its window shut); every task is still answered, none refused."""
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 0.3})
    executor, port = start(front, {"i0": instance.info["port"]}, "--instance-inflight", "5000")
    try:

        async def run():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stream = ch.stream_stream("/InferenceProxy/infer_stream")

                async def gen():
                    for i in range(3000):
                        yield frame("w", i, str(i))

                return [codec.decode_message(m) async for m in stream(gen(), timeout=60)]

        outs = asyncio.run(run())
        assert sorted(o.seq_no for o in outs) == list(range(3000))
        assert all(o.data == str(o.seq_no) for o in outs)
    finally:
        executor.stop()
        instance.stop()


def test_native_front_unavailable_is_a_one_line_error():
    """Without the compiled front (here: AIOS_FAST_NO_EXTENSIONS=1) --front native stops
    at once with one line and exit status 2."""
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast.executor", "--front", "native", "--port", "0",
         "--workers", "1", "--mgmt-port", "-1", "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(_root()), AIOS_FAST_NO_EXTENSIONS="1"),
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--front native" in out.stderr, out.stderr


@pytest.mark.parametrize(
    "args", [("--keepalive", "-1"), ("--keepalive", "1e10"), ("--keepalive", "inf"),
             ("--keepalive", "nan"), ("--keepalive-timeout", "0"),
             ("--keepalive-timeout", "nan")],
)  # fmt: skip
def test_bad_keepalive_settings_are_a_one_line_error(args):
    out = subprocess.run(
        [sys.executable, "-m", "aios_fast.executor", "--port", "0", "--workers", "1",
         "--mgmt-port", "-1", "--metrics-port", "-1", *args],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(_root())),
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--keepalive" in out.stderr, out.stderr


@pytest.mark.parametrize("pure", [False, True])
def test_auto_front_is_native_where_built(pure):
    """The default (--front auto) serves with the native front where it is built and the
    extensions are in use, and falls back to grpcio otherwise; the announcement says
    which."""
    env = dict(os.environ, PYTHONPATH=str(_root()))
    if pure:
        env["AIOS_FAST_NO_EXTENSIONS"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "aios_fast.executor", "--port", "0", "--workers", "1",
         "--mgmt-port", "-1", "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        info = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    built = not pure and unavailable() is None
    assert info["front"] == ("native" if built else "grpcio")


def test_block_up_front_setting_is_checked(tmp_path):
    doc = tmp_path / "b.json"
    doc.write_text(json.dumps({"id": "b", "initSettings": {"front": "fast"}}))
    out = subprocess.run([sys.executable, "-m", "aios_fast", "block", "up", str(doc),
                          "--ports", "auto", "--once"], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=str(_root())))  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert 'initSettings.front: expected one of auto, native, grpcio, not "fast"' in out.stderr


def test_a_silent_client_is_cut_on_both_fronts(front):
    """--keepalive / --keepalive-timeout mean the same on both fronts: a client that sends
    its preface and then nothing (it never answers a PING), with no call open, is cut
    after about keepalive + timeout. (grpc core pings only connections with calls, and
    only twice without data, unless told otherwise.)"""
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 0.01})
    executor, port = start(front, {"i0": instance.info["port"]},
                           "--keepalive", "0.3", "--keepalive-timeout", "0.4")  # fmt: skip
    try:
        silent = RawClient(port)
        silent.sock.settimeout(0.2)
        end, cut = time.monotonic() + 8, False
        while not cut and time.monotonic() < end:
            try:
                cut = silent.sock.recv(65536) == b""  # raw: no PING is ever answered
            except TimeoutError:
                pass
            except ConnectionError:
                cut = True
        silent.close()
        assert cut, "a client that never answered the keepalive PINGs was kept for 8 s"
    finally:
        executor.stop()
        instance.stop()
