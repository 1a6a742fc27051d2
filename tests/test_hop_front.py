"""vDAG hops on the executor's framed front (aios_fast.executor.hop_front and
aios_fast.vdag.hop_link): the transport a sender picks, what each hop's end is
(answered, refused with the executor's status, broken with its connection), and the
front under hostile connections. The vDAG semantics over it are test_vdag_*.py's,
which run on it in the compiled pass."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
import stat

import msgspec
import pytest

from aios_fast import codec
from aios_fast.auth import Auth
from aios_fast.service.framed import framing, framing_compiled
from aios_fast.vdag import hop_link
from aios_fast.vdag.streams import HopStreams
from aios_fast.wire import BATCH, HELLO, PING, PONG, REFUSE, WELCOME, link_limit

from .procs import start_executor, start_instance

TOKEN = "secret-0123456789abcdef"
pytestmark = pytest.mark.skipif(not framing_compiled(), reason="the framing is not compiled")


def _payload(data: str, seq: int = 1) -> bytes:
    return codec.encode_packet(codec.Packet(session_id="s", seq_no=seq, data=data))


async def _hops(target: str, payloads: list[bytes], metadata: tuple = (), timeout=10.0,
                wait: float = 10.0):  # fmt: skip
    """Send the hops; (failures [(i, code, message)], the streams object) once every
    hop ended or ``wait`` passed."""
    streams = HopStreams(metadata)
    failures: list = []
    for i, body in enumerate(payloads):
        streams.send(target, "b", body, f"t{i} n", ("s", i), timeout,
                     lambda code, msg, i=i: failures.append((i, code, msg)))  # fmt: skip
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while streams.in_flight() and loop.time() < end:
        await asyncio.sleep(0.01)
    return failures, streams


@pytest.fixture(scope="module")
def block():
    instance = start_instance("tests.blocks:SleepBlock", {"delay": 0.0})
    executor, port = start_executor({"i0": instance.info["port"]})
    yield port
    executor.stop()
    instance.stop()


def _kind(streams: HopStreams, target: str):
    stream = streams._streams.get((target, "b"))
    if isinstance(stream, hop_link.FramedStream) and stream.proto is not None:
        sock = stream.proto.transport.get_extra_info("socket")
        return "unix" if sock.family == socket.AF_UNIX else "tcp"
    return type(stream).__name__


@pytest.mark.parametrize("unix", [True, False])
def test_hops_go_on_the_executors_framed_front(block, unix, monkeypatch):
    if not unix:  # as from another host: the socket's path is not here
        monkeypatch.setattr(hop_link.os.path, "exists", lambda path: False)
    target = f"127.0.0.1:{block}"

    async def run():
        failures, streams = await _hops(target, [_payload(f"x{i}", i) for i in range(200)])
        kind = _kind(streams, target)
        await streams.close()
        return failures, kind, streams.in_flight()

    failures, kind, left = asyncio.run(run())
    assert failures == [] and left == 0
    assert kind == ("unix" if unix else "tcp")


def test_a_hop_the_executor_cannot_place_fails_with_its_status():
    executor, port = start_executor({})  # no instance: every task is UNAVAILABLE

    async def run():
        failures, streams = await _hops(f"127.0.0.1:{port}", [_payload("a", 1), _payload("b", 2)])
        kind = _kind(streams, f"127.0.0.1:{port}")
        await streams.close()
        return failures, kind

    try:
        failures, kind = asyncio.run(run())
    finally:
        executor.stop()
    assert kind == "unix"
    assert sorted(i for i, _, _ in failures) == [0, 1]  # each matched by its id
    assert {code for _, code, _ in failures} == {"UNAVAILABLE"}


def test_a_token_is_required_and_an_executor_without_the_front_keeps_grpc(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"infer {TOKEN}\n")
    instance = start_instance("aios_fast.block:EchoBlock", None, "--auth-file", str(tokens))
    executor, port = start_executor({"i0": instance.info}, "--auth-file", str(tokens),
                                    token=TOKEN)  # fmt: skip
    grpcio, gport = start_executor({"i0": instance.info}, "--auth-file", str(tokens),
                                   "--front", "grpcio", token=TOKEN)  # fmt: skip
    target, plain = f"127.0.0.1:{port}", f"127.0.0.1:{gport}"

    async def run():
        good, s1 = await _hops(target, [_payload("a")], (("authorization", f"Bearer {TOKEN}"),))
        bad, s2 = await _hops(target, [_payload("a")])
        # (a packet that is not a vDAG task gets no ack on the gRPC stream: only where
        # it went is looked at)
        _, s3 = await _hops(plain, [_payload("a")], (("authorization", f"Bearer {TOKEN}"),),
                            wait=0.5)  # fmt: skip
        out = good, _kind(s1, target), bad, _kind(s3, plain), s3.not_framed
        for s in (s1, s2, s3):
            await s.close()
        return out

    try:
        good, kind, bad, old, not_framed = asyncio.run(run())
    finally:
        for proc in (executor, grpcio, instance):
            proc.stop()
    assert good == [] and kind == "unix"
    # no token: the front refuses it, the gRPC stream's answer says why
    assert [code for _, code, _ in bad] == ["UNAUTHENTICATED"]
    assert old == "_Stream" and not_framed == {(plain, "b"): math.inf}  # for good


def test_hops_in_flight_fail_at_once_when_the_executor_is_killed():
    """Hops written to an executor that stopped (SIGSTOP: not taken, not answered) fail
    UNAVAILABLE as soon as it is killed: the connection's end, not their timeout."""
    instance = start_instance()
    executor, port = start_executor({"i0": instance.info["port"]})
    target = f"127.0.0.1:{port}"

    async def run():
        streams = HopStreams()
        failures: list = []
        streams.send(target, "b", _payload("x", 0), "t0 n", ("s", 0), 60.0, failures.append)
        while streams.in_flight():  # connected, taken
            await asyncio.sleep(0.01)
        executor.p.send_signal(signal.SIGSTOP)
        for i in range(1, 4):
            streams.send(target, "b", _payload("x", i), f"t{i} n", ("s", i), 60.0,
                         lambda code, msg: failures.append(code))  # fmt: skip
        await asyncio.sleep(0.5)
        assert streams.in_flight() == 3 and not failures
        t0 = asyncio.get_running_loop().time()
        executor.p.send_signal(signal.SIGKILL)
        while streams.in_flight():
            await asyncio.sleep(0.01)
        waited = asyncio.get_running_loop().time() - t0
        await streams.close()
        return failures, waited, streams.broken

    try:
        failures, waited, broken = asyncio.run(run())
    finally:
        executor.stop()
        instance.stop()
    assert failures == ["UNAVAILABLE"] * 3 and broken == 3
    assert waited < 5.0  # the connection's end, not the hops' 60 s timeout


# ------------------------------------------------------------------ hostile connections


class _Run:
    def __init__(self, call) -> None:
        self.call = call
        self.frame = b""
        self.over = False
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def test_the_hop_front_refuses_what_a_hostile_client_sends(monkeypatch):
    from aios_fast.executor import hop_front

    monkeypatch.setattr(hop_front, "HANDSHAKE_TIMEOUT", 0.3)
    runs: list[_Run] = []

    def run_task(message, want_result, timeout, on_done, call):
        run = _Run(call)
        run.on_done = on_done  # type: ignore[attr-defined]
        runs.append(run)
        return run

    def hello(token: str) -> bytes:
        return framing.frame(HELLO, msgspec.msgpack.encode({"v": 1, "token": token}))

    def batch(*ids: int) -> bytes:
        return framing.frame(BATCH, msgspec.msgpack.encode([[i, 0.0, b"m"] for i in ids]))

    async def frames(reader, until: int, timeout: float = 5.0):
        got: list = []
        cut = framing.FrameReader(1 << 30)
        while True:
            data = await asyncio.wait_for(reader.read(1 << 16), timeout)
            if not data:
                return [*got, None]
            got += [(k, bytes(b)) for k, b in cut.feed(data)]
            if any(k == until for k, _ in got):
                return got

    async def run():
        from aios_fast.tls import TLS

        front = hop_front.HopFront(run_task, Auth({"secret": ["infer"]}), TLS(), "127.0.0.1",
                                   1 << 20, window=3)  # fmt: skip
        await front.start()
        ep = msgspec.msgpack.decode(front.endpoints())
        out = {"mode": stat.S_IMODE(os.stat(ep["unix"]).st_mode), "ep": ep}

        async def session(*data: bytes, until: int = -1):
            r, w = await asyncio.open_unix_connection(ep["unix"])
            for d in data:
                w.write(d)
            try:
                return await frames(r, until)
            finally:
                w.close()

        out["silent"] = await session()
        out["batch_first"] = await session(batch(1))
        out["over_64k"] = await session(framing.header(HELLO, 64 * 1024 + 1))
        out["no_token"] = await session(hello(""))
        out["garbage"] = await session(hello("Bearer secret"), framing.frame(BATCH, b"\x93\xc1"))
        over = link_limit(1 << 20) + 1
        out["over_limit"] = await session(hello("Bearer secret"), framing.header(BATCH, over))
        out["ran_before"] = len(runs)
        # a window of 3: five tasks sent, three run until one is answered
        r, w = await asyncio.open_unix_connection(ep["unix"])
        w.write(hello("Bearer secret") + batch(1, 2, 3))
        await frames(r, WELCOME)
        w.write(batch(4, 5) + framing.frame(PING))
        await asyncio.sleep(0.3)
        out["window"] = [run.call for run in runs[out["ran_before"] :]]
        first = runs[out["ran_before"]]
        first.on_done(first, codec.encode_message(_payload("done")), None)
        answered = await frames(r, BATCH)
        await asyncio.sleep(0.3)
        out["after"] = [run.call for run in runs[out["ran_before"] :]]
        out["answered"] = answered
        w.close()
        # the connection's end cancels what still runs, once it is read again (a paused
        # connection sees its end when it is under the window: two more answered)
        for run in runs[out["ran_before"] + 1 : out["ran_before"] + 3]:
            run.on_done(run, codec.encode_message(_payload("done")), None)
        await asyncio.sleep(0.3)
        out["cancelled"] = [run.call for run in runs[out["ran_before"] :] if run.cancelled]
        await front.stop()
        out["removed"] = not os.path.exists(ep["unix"])
        return out

    r = asyncio.run(run())
    assert r["mode"] == 0o600 and r["removed"]
    assert r["silent"] == [None]
    assert r["batch_first"] == [(REFUSE, b"HELLO must come first"), None]
    assert r["over_64k"] == [None]
    assert r["no_token"][0] == (REFUSE, b"a valid bearer token is required "
                                         b"(authorization: Bearer ...)")  # fmt: skip
    assert r["garbage"][0][0] == WELCOME and r["garbage"][-1] is None
    assert r["over_limit"][-1] is None and r["ran_before"] == 0
    assert r["window"] == [1, 2, 3]  # 4 and 5 not read while three ran (nor the PING)
    assert r["after"] == [1, 2, 3, 4]  # one answered: one more started (5 waits)
    kinds = [k for k, _ in r["answered"]]
    assert BATCH in kinds
    answers = [a for k, b in r["answered"] if k == BATCH for a in msgspec.msgpack.decode(b)]
    assert [a[0] for a in answers] == [1]
    assert sorted(r["cancelled"]) == [4, 5]
    assert PONG in kinds  # the PING read with them is answered


# ------------------------------------------------------------------ the controller's answers


def test_answers_reach_the_controller_framed_and_its_cancels_come_back():
    """vdag.controller.answers and vdag.hop_link.FramedReplies, in process: the answers
    sent before and after the connection is up arrive in order, a cancellation comes
    back, a bad answer is counted, and a controller without the front gets the answers
    on the gRPC stream (fallback, told it is unimplemented)."""
    import grpc

    from aios_fast.service.framed_listener import endpoints_handler
    from aios_fast.tls import TLS
    from aios_fast.vdag.controller.answers import AnswersFront
    from aios_fast.vdag.hop_link import FramedReplies

    async def run():
        got: list[bytes] = []
        bad = [0]

        def deliver(message: bytes) -> None:
            try:
                got.append(codec.decode_message(message).data)
            except Exception:
                bad[0] += 1

        watchers: set = set()
        front = AnswersFront(deliver, watchers.add, watchers.discard, Auth({TOKEN: ["infer"]}),
                             TLS(), "127.0.0.1")  # fmt: skip
        await front.start()

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((endpoints_handler(front.endpoints),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        bare = grpc.aio.server()  # no Endpoints: UNIMPLEMENTED
        bare_port = bare.add_insecure_port("127.0.0.1:0")
        await bare.start()
        cancels: list[str] = []
        fell_back: list = []
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        auth = (("authorization", f"Bearer {TOKEN}"),)
        replies = FramedReplies(f"127.0.0.1:{port}", channel, auth, TLS(), cancels.append,
                                lambda q, u: fell_back.append((q, u)))  # fmt: skip
        for i in range(3):  # before the connection is up
            replies.send(_payload(f"a{i}"))
        while replies.writer is None and not replies.closed:
            await asyncio.sleep(0.01)
        for i in range(3, 5):
            replies.send(_payload(f"a{i}"))
        replies.writer.put((0, 0.0, b"\xff\xff"), 2)  # not an answer
        await asyncio.sleep(0.3)
        for watcher in list(watchers):
            watcher.put_nowait("task-7")
        await asyncio.sleep(0.3)
        refused: list = []
        no_token = FramedReplies(f"127.0.0.1:{port}", channel, (), TLS(), cancels.append,
                                 lambda q, u: refused.append((q, u)))  # fmt: skip
        no_token.send(b"x")
        bare_channel = grpc.aio.insecure_channel(f"127.0.0.1:{bare_port}")
        old = FramedReplies(f"127.0.0.1:{bare_port}", bare_channel, (), TLS(), cancels.append,
                            lambda q, u: fell_back.append((q, u)))  # fmt: skip
        old.send(b"y")
        await asyncio.sleep(1.0)
        out = got, bad[0], cancels, fell_back, refused, len(watchers)
        for r in (replies, no_token, old):
            await r.close()
        await front.stop()
        await server.stop(0)
        await bare.stop(0)
        await channel.close()
        await bare_channel.close()
        return out

    got, bad, cancels, fell_back, refused, watching = asyncio.run(run())
    assert got == [f"a{i}" for i in range(5)] and bad == 1
    assert cancels == ["task-7"] and watching == 1  # (the refused one never watched)
    assert fell_back == [([b"y"], True)]  # no front there: gRPC from now on
    assert refused == [([b"x"], False)]  # refused (no token): this batch on gRPC, whose
    # stream reports the refusal itself


def test_an_unreachable_hop_front_is_left_alone_for_a_while(block, monkeypatch):
    """A hop front that cannot be reached (its port dropped by a network policy, say)
    costs the hops that found it so no more than a fallback: the target keeps the gRPC
    stream for RETRY_FRAMED seconds, and the hops get through on it."""
    from aios_fast.service import framed as framed_module

    target = f"127.0.0.1:{block}"
    monkeypatch.setattr(hop_link.os.path, "exists", lambda path: False)

    async def refuse(*args, **kwargs):
        raise ConnectionRefusedError("refused")

    async def run():
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "create_connection", refuse)
        failures, streams = await _hops(target, [_payload("a")], wait=0.5)
        until = streams.not_framed.get((target, "b"), 0.0) - loop.time()
        kind = _kind(streams, target)
        before_close = list(failures)
        await streams.close()
        return before_close, until, kind

    failures, until, kind = asyncio.run(run())
    assert framed_module.framing_compiled()
    assert kind == "_Stream" and hop_link.RETRY_FRAMED - 5 < until <= hop_link.RETRY_FRAMED
    assert failures == []  # (on the gRPC stream; an echo answer there is no ack: pending)
