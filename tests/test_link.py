"""The native instance link (aios_fast.wire, "Native link"): its framing, compiled and
twin; the writer's batching; the instance's listener under hostile connections; the
executor's choice of transport. The link's guarantees under faults (kill -9, SIGSTOP,
drain, limits, deadlines, a wedged loop) are test_faults.py's and test_executor.py's,
which run over the native link in the compiled pass and the gRPC link in the pure pass
(AIOS_FAST_TEST_LINK picks one explicitly)."""

from __future__ import annotations

import asyncio
import os
import random
import stat
from pathlib import Path

import grpc
import msgspec
import pytest

from aios_fast import codec as packet_codec
from aios_fast.auth import Auth
from aios_fast.block import EchoBlock
from aios_fast.wire import (
    ACK,
    BATCH,
    HELLO,
    LINK_BATCH_BYTES,
    PING,
    PONG,
    REFUSE,
    RESULT,
    TASK,
    WELCOME,
    decode_replies,
    encode_tasks,
    link_limit,
)

from .conftest import _twin


@pytest.fixture(params=["c", "py"])
def link(request):
    return _twin(request, "_link")


# ------------------------------------------------------------------ framing


def test_frames_come_back_whole_however_the_stream_is_cut(link):
    rnd = random.Random(7)
    sizes = [0, 1, 4, 5, 6, 100, 65535, 65536, 65537, 300_000]
    frames = [(rnd.randrange(256), rnd.randbytes(rnd.choice(sizes))) for _ in range(200)]
    data = b"".join(link.frame(kind, body) for kind, body in frames)
    for cuts in ([1], [3, 5, 7], [4096], [65536, 1], [len(data)]):
        reader, got, pos = link.FrameReader(1 << 20), [], 0
        while pos < len(data):
            n = rnd.choice(cuts)
            got += [(kind, bytes(body)) for kind, body in reader.feed(data[pos : pos + n])]
            pos += n
        assert got == frames and reader.buffered == 0


def test_the_compiled_reader_and_its_twin_agree():
    from aios_fast import _link, _link_py

    rnd = random.Random(3)
    data = b"".join(_link.frame(rnd.randrange(8), rnd.randbytes(rnd.randrange(0, 70_000)))
                    for _ in range(50))  # fmt: skip
    readers = (_link.FrameReader(1 << 20), _link_py.FrameReader(1 << 20))
    pos = 0
    while pos < len(data):
        n = rnd.randrange(1, 20_000)
        a, b = (r.feed(data[pos : pos + n]) for r in readers)
        assert [(k, bytes(v)) for k, v in a] == [(k, bytes(v)) for k, v in b]
        assert readers[0].buffered == readers[1].buffered
        pos += n
    assert _link.header(7, 300) == _link_py.header(7, 300)


def test_a_frame_exactly_at_the_limit_is_read_and_one_byte_over_is_refused(link):
    reader = link.FrameReader(100)
    assert [(k, bytes(b)) for k, b in reader.feed(link.frame(BATCH, b"x" * 100))] == [
        (BATCH, b"x" * 100)
    ]
    with pytest.raises(link.FrameError, match="101-byte frame is over the 100-byte limit"):
        reader.feed(link.header(BATCH, 101))  # refused at its header: nothing is buffered


# ------------------------------------------------------------------ the writer


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


def _batches(link_module, writes):
    reader = link_module.FrameReader(1 << 30)
    return [
        msgspec.msgpack.decode(body) for data in writes for kind, body in reader.feed(data)
        if kind == BATCH
    ]  # fmt: skip


def test_a_loop_turn_is_one_write_and_batches_are_cut_at_the_batch_bytes():
    from aios_fast import _link_py
    from aios_fast.service.framed import FrameWriter

    async def run():
        transport = _Transport()
        writer = FrameWriter(transport)  # type: ignore[arg-type]
        for i in range(3):
            writer.put([i, 0, b"ab"], 2)
        await asyncio.sleep(0)
        one_turn = list(transport.writes)
        transport.writes.clear()
        half = b"x" * (LINK_BATCH_BYTES // 2)
        big = b"y" * (LINK_BATCH_BYTES + 1)
        for i, payload in enumerate([half, half, half, big, b"z"]):
            writer.put([i, 0, payload], len(payload))
        await asyncio.sleep(0)
        return one_turn, list(transport.writes)

    one_turn, cut = asyncio.run(run())
    assert len(one_turn) == 1 and _batches(_link_py, one_turn) == [
        [[i, 0, b"ab"] for i in range(3)]
    ]
    assert len(cut) == 1  # still one write ...
    sizes = [[len(item[2]) for item in batch] for batch in _batches(_link_py, cut)]
    half = LINK_BATCH_BYTES // 2
    # ... of three frames: two halves fill one, the third half waits for the next, the
    # item larger than a batch goes alone, the small one starts the last
    assert sizes == [[half, half], [half], [LINK_BATCH_BYTES + 1], [1]]


# ------------------------------------------------------------------ the listener


def _task_frame(link_module, task_id: int, data: str) -> bytes:
    frame = packet_codec.encode_message(packet_codec.encode_packet(packet_codec.Packet(data=data)))
    return link_module.frame(BATCH, encode_tasks([(task_id, TASK, frame, 0.0)]))


async def _read_frames(reader: asyncio.StreamReader, link_module, until: int, timeout=5.0):
    """Frames until one of kind ``until`` (or the connection's end: None appended)."""
    frames = link_module.FrameReader(1 << 30)
    got: list = []
    while True:
        data = await asyncio.wait_for(reader.read(1 << 16), timeout)
        if not data:
            return [*got, None]
        got += [(k, bytes(b)) for k, b in frames.feed(data)]
        if any(k == until for k, _ in got):
            return got


def test_the_listener_refuses_what_a_hostile_client_sends(monkeypatch):
    from aios_fast import _link_py as lk
    from aios_fast.instance import InstanceServer, native_link

    monkeypatch.setattr(native_link, "HANDSHAKE_TIMEOUT", 0.3)

    def hello(token: str) -> bytes:
        body = {"v": 1, "max_message": 1 << 20, "run_timeout": 0.0, "token": token}
        return lk.frame(HELLO, msgspec.msgpack.encode(body))

    async def run():
        server = InstanceServer(EchoBlock(), auth=Auth({"secret": ["infer"]}), max_message=1 << 20)
        await server.start()
        listener = server._native
        ep = listener.endpoints()
        path = ep["unix"]
        results = {"mode": stat.S_IMODE(os.stat(path).st_mode)}

        async def session(*frames_out: bytes, until: int = -1, tcp: bool = False):
            if tcp:
                r, w = await asyncio.open_connection("127.0.0.1", ep["tcp"])
            else:
                r, w = await asyncio.open_unix_connection(path)
            for data in frames_out:
                w.write(data)
            try:
                return await _read_frames(r, lk, until)
            finally:
                w.close()

        results["silent"] = await session(until=-1)
        results["batch_first"] = await session(_task_frame(lk, 1, "a"))
        results["over_64k"] = await session(lk.header(HELLO, 64 * 1024 + 1), until=-1)
        results["at_64k"] = await session(lk.frame(HELLO, b"\xc1" * 64 * 1024))
        results["no_token"] = await session(hello(""), tcp=True)
        results["bad_token"] = await session(hello("Bearer nope"), tcp=True)
        results["welcome"] = await session(hello("Bearer secret"), until=WELCOME)
        results["served"] = await session(hello("Bearer secret"), _task_frame(lk, 9, "hi"),
                                          lk.frame(PING), until=BATCH)  # fmt: skip
        results["garbage"] = await session(hello("Bearer secret"), lk.frame(BATCH, b"\x93\xc1"),
                                           until=-1)  # fmt: skip
        over = link_limit(1 << 20) + 1
        results["over_limit"] = await session(hello("Bearer secret"), lk.header(BATCH, over),
                                              until=-1)  # fmt: skip
        results["nonce"] = ep["nonce"]
        stale = Path(path).with_name("link-1-999999999.sock")  # a kill -9'd instance's
        stale.touch()
        other = InstanceServer(EchoBlock())
        await other.start()
        results["pruned"] = not stale.exists()
        await other.stop(1)
        await server.stop(1)
        results["removed"] = not os.path.exists(path)
        return results

    r = asyncio.run(run())
    assert r["mode"] == 0o600 and r["removed"] and r["pruned"]
    assert r["silent"] == [None]  # cut after the handshake timeout, nothing said
    assert r["batch_first"] == [(REFUSE, b"HELLO must come first"), None]
    assert r["over_64k"] == [None]  # cut at the header, never buffered
    assert r["at_64k"][0][0] == REFUSE and r["at_64k"][0][1].startswith(b"bad HELLO")
    assert r["no_token"][0] == (REFUSE, b"a valid bearer token is required "
                                         b"(authorization: Bearer ...)")  # fmt: skip
    assert r["bad_token"][0][0] == REFUSE and r["bad_token"][-1] is None
    kind, body = r["welcome"][0]
    assert kind == WELCOME
    assert msgspec.msgpack.decode(body) == {"max_message": 1 << 20, "nonce": r["nonce"]}
    replies = [item for kind, body in r["served"] if kind == BATCH
               for item in decode_replies(body)]  # fmt: skip
    assert [(task_id, kind) for task_id, kind, _ in replies] == [(9, RESULT)]  # ACK dropped
    assert packet_codec.decode_packet(replies[0][2]).data == "hi"
    assert (PONG, b"") in r["served"]  # answered at once, not after the batch
    assert r["garbage"][0][0] == WELCOME and r["garbage"][-1] is None  # cut, nothing run
    assert r["over_limit"][-1] is None and all(k != BATCH for k, _ in r["over_limit"][1:-1])


# ------------------------------------------------------------------ the executor's choice


@pytest.mark.parametrize(("link", "offered", "expect"), [
    ("native", True, "unix"),
    ("tcp", True, "tcp"),
    ("native", False, "grpc"),  # an instance without a native link keeps the gRPC stream
    ("grpc", True, "grpc"),
])  # fmt: skip
def test_the_executor_takes_the_transport_the_instance_offers(link, offered, expect, monkeypatch):
    from aios_fast.executor import Executor, ExecutorConfig, InstanceSpec
    from aios_fast.instance import InstanceServer

    if not offered:

        async def unimplemented(self, request, context):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no such method")

        monkeypatch.setattr(InstanceServer, "_endpoints", unimplemented)

    async def run():
        instance = InstanceServer(EchoBlock())
        await instance.start()
        spec = InstanceSpec("i0", f"127.0.0.1:{instance.port}")
        executor = Executor(ExecutorConfig(port=0, instances=[spec], link=link))
        await executor.start()
        await executor.wait_ready()
        frames = [packet_codec.encode_message(packet_codec.encode_packet(
            packet_codec.Packet(data=f"t{i}"))) for i in range(50)]  # fmt: skip
        async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as ch:
            rpc = ch.unary_unary("/InferenceProxy/infer_result")
            outs = await asyncio.gather(*[rpc(f, timeout=10) for f in frames])
        row = executor.hosts.describe("i0")
        await executor.stop(2)
        await instance.stop(1)
        return [packet_codec.decode_message(o).data for o in outs], row

    outs, row = asyncio.run(run())
    assert outs == [f"t{i}" for i in range(50)]
    assert row["transport"] == expect and row["completed"] == 50 and row["lost"] == 0


def test_acks_come_before_results_on_a_slow_task():
    """A task that runs long is acknowledged at once (the executor may then count it
    lost, never retry it), its result later, in another frame."""
    from aios_fast import _link_py as lk
    from aios_fast.instance import InstanceServer

    from .blocks import SleepBlock

    async def run():
        server = InstanceServer(SleepBlock(parameters={"delay": 0.3}))
        await server.start()
        r, w = await asyncio.open_unix_connection(server._native.endpoints()["unix"])
        w.write(lk.frame(HELLO, msgspec.msgpack.encode({"v": 1})))
        w.write(_task_frame(lk, 5, "slow"))
        frames = lk.FrameReader(1 << 30)
        kinds: list = []
        while RESULT not in [k for _, k in kinds]:
            data = await asyncio.wait_for(r.read(1 << 16), 5)
            for kind, body in frames.feed(data):
                if kind == BATCH:
                    kinds += [(asyncio.get_running_loop().time(), item[1])
                              for item in decode_replies(body)]  # fmt: skip
        w.close()
        await server.stop(1)
        return kinds

    kinds = asyncio.run(run())
    assert [k for _, k in kinds] == [ACK, RESULT]
    assert kinds[1][0] - kinds[0][0] > 0.2  # the ACK did not wait for the run


def test_an_executor_that_does_not_read_is_not_read_either():
    """Back-pressure: while the replies pile up unread, the instance takes no new tasks
    (it stops reading the connection); once they are read, every task is answered."""
    from aios_fast import _link_py as lk
    from aios_fast.instance import InstanceServer

    n, size = 200, 200 * 1024

    async def run():
        server = InstanceServer(EchoBlock(), max_message=1 << 20)
        await server.start()
        r, w = await asyncio.open_unix_connection(server._native.endpoints()["unix"], limit=1 << 22)
        w.write(lk.frame(HELLO, msgspec.msgpack.encode({"v": 1, "max_message": 1 << 20})))
        await _read_frames(r, lk, until=WELCOME)

        async def send():
            for i in range(n):
                w.write(_task_frame(lk, i + 1, "x" * size))
                await w.drain()

        sender = asyncio.ensure_future(send())
        await asyncio.sleep(1.0)
        stalled = server.outcomes.completed
        frames, results = lk.FrameReader(1 << 30), 0
        while results < n:
            data = await asyncio.wait_for(r.read(1 << 20), 10)
            assert data, "the instance closed the connection"
            for kind, body in frames.feed(data):
                if kind == BATCH:
                    results += sum(item[1] == RESULT for item in decode_replies(body))
        await sender
        w.close()
        done = server.outcomes.completed
        await server.stop(1)
        return stalled, done, results

    stalled, done, results = asyncio.run(run())
    assert stalled < n // 4  # not all 40 MB read and answered into an unread buffer
    assert done == results == n
