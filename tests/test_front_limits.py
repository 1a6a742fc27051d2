"""What a client may make the native front hold, and for how long (issue 23, items 1, 2,
4 and 5), with real processes and raw HTTP/2 clients, at the limits: a call without
the token is refused at its headers (nothing of its body kept); the per-connection and
process-wide budgets exactly at and just over; a client that never reads its answers;
memory given back once it has left; the handshake timeout; the connection limit; a
header list exactly at and just over the advertised 16 KiB."""

from __future__ import annotations

import socket
import time

import grpc
import h2.events
import h2.exceptions
import pytest

from aios_fast.executor.native_front import unavailable

from .procs import frame, get_text, mgmt, start_executor, start_instance
from .test_front import RawClient, grpc_body, grpc_headers

MiB = 1 << 20
TOKEN = "infer-token-" + "x" * 24
READ_TOKEN = "read-token-" + "x" * 24
ADMIN_TOKEN = "admin-token-" + "x" * 24


@pytest.fixture(scope="module")
def echo():
    if why := unavailable():
        pytest.skip(f"native front: {why}")
    instance = start_instance("tests.blocks:ControlBlock")
    yield instance
    instance.stop()


def native(instance, *extra: str, front: str = "native", **kw):
    return start_executor({"i0": instance.info}, "--front", front, *extra, **kw)


def front_stats(executor, token: str | None = None) -> dict:
    status, body = mgmt(executor.info["mgmt_port"], "stats", token=token)
    assert status == 200, body
    return body["data"]["front"]


def wait_for(check, what: str, seconds: float = 15.0):
    end = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < end, what
        time.sleep(0.05)
    return value


def status_of(client: RawClient, sid: int) -> tuple[str, str]:
    """(grpc-status, grpc-message) the server ends stream ``sid`` with."""
    headers: dict[bytes, bytes] = {}

    def done(event) -> bool:
        if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            if event.stream_id == sid:
                headers.update(event.headers)
        if isinstance(event, h2.events.DataReceived):  # take answers: windows stay open
            client.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return getattr(event, "stream_id", None) == sid and isinstance(
            event, (h2.events.StreamEnded, h2.events.StreamReset))  # fmt: skip

    client.events(done)
    return headers.get(b"grpc-status", b"").decode(), headers.get(b"grpc-message", b"").decode()


def call(client: RawClient, port: int, body: bytes | None, extra=(), method="infer_result"):
    """A whole unary call on the raw connection: its (grpc-status, grpc-message)."""
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, grpc_headers(port, method) + list(extra))
    client.h2.send_data(sid, grpc_body(body if body is not None else frame()), end_stream=True)
    client.flush()
    return status_of(client, sid)


def send(client: RawClient, sid: int, data: bytes, end_stream: bool = False) -> None:
    """``data`` on stream ``sid`` in frames the server takes (within its windows)."""
    step = client.h2.max_outbound_frame_size
    for k in range(0, len(data), step):
        client.h2.send_data(sid, data[k : k + step])
    if end_stream:
        client.h2.end_stream(sid)


def partial(client: RawClient, port: int, size: int, sent: int, extra=()) -> int:
    """A call whose message (``size`` bytes) is sent only up to ``sent`` bytes, prefix
    included: that many bytes the server must buffer. Returns the stream id."""
    sid = client.h2.get_next_available_stream_id()
    client.h2.send_headers(sid, grpc_headers(port) + list(extra))
    send(client, sid, (b"\x00" + size.to_bytes(4, "big") + bytes(size))[:sent])
    client.flush()
    return sid


def connected(port: int) -> RawClient:
    """A raw connection past the handshake (the server's SETTINGS read)."""
    client = RawClient(port)
    client.events(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
    return client


# ---------------------------------------------------------------- 1. the token


@pytest.mark.parametrize("front", ["grpcio", "native"])
def test_a_call_without_the_token_is_refused_at_its_headers(tmp_path, front):
    """With a token required, a call without it (or with a token for another role) is
    answered at its HEADERS, before the client sent any of its body (on both fronts);
    bodies sent anyway are dropped: the native front holds nothing for them."""
    if front == "native" and (why := unavailable()):
        pytest.skip(f"native front: {why}")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"infer {TOKEN}\nread {READ_TOKEN}\nadmin {ADMIN_TOKEN}\n")
    instance = start_instance("tests.blocks:ControlBlock", None, "--auth-file", str(tokens))
    executor, port = native(instance, "--auth-file", str(tokens), "--max-message",
                            str(8 * MiB), front=front, token=TOKEN)  # fmt: skip
    client = connected(port)
    try:
        for method in ("infer", "infer_result", "infer_stream"):
            for extra, want in (((), "16"), ((("authorization", f"Bearer {READ_TOKEN}"),), "7")):
                sid = client.h2.get_next_available_stream_id()
                client.h2.send_headers(sid, grpc_headers(port, method) + list(extra))
                client.flush()  # HEADERS only: no body yet
                assert status_of(client, sid)[0] == want, (method, extra)
        # 8 calls x 4 MiB of a message without the token: nothing of it is kept
        streams = [partial(client, port, 4 * MiB, 0) for _ in range(8)]
        left = dict.fromkeys(streams, 4 * MiB)
        while left:
            for sid in list(left):
                try:
                    room = min(client.h2.local_flow_control_window(sid), left[sid],
                               client.h2.max_outbound_frame_size)  # fmt: skip
                    if room:
                        client.h2.send_data(sid, bytes(room))
                        left[sid] -= room
                except h2.exceptions.StreamClosedError:
                    left[sid] = 0
                if not left[sid]:
                    del left[sid]
            client.flush()
            client.sock.settimeout(0.2)
            try:
                client.h2.receive_data(client.sock.recv(1 << 16))
            except TimeoutError:
                pass
            client.flush()
        if front == "native":
            stats = front_stats(executor, ADMIN_TOKEN)
            assert stats["buffered_bytes"] == 0, stats
        # with the token, the same connection's calls run
        client.sock.settimeout(10)
        assert (
            call(client, port, frame(data="ok"), [("authorization", f"Bearer {TOKEN}")])[0] == "0"
        )
    finally:
        client.close()
        executor.stop()
        instance.stop()


# ---------------------------------------------------------------- 2. budgets


@pytest.mark.parametrize("budget", ["connection", "process"])
def test_budgets_exactly_at_and_just_over(echo, budget):
    """Request bytes buffered (incomplete messages): exactly at the budget (100,000
    bytes a connection; 150,000 the process) new calls still run; one byte over, they
    get RESOURCE_EXHAUSTED (for the process's budget, on a connection under its own
    too), counted in /stats and /metrics; once the call over it is reset, new calls run
    again (the connection's window was given back)."""
    process = budget == "process"
    executor, port = native(echo, "--max-message", "65536", "--connection-budget", "100000",
                            "--front-budget", "150000" if process else "1000000")  # fmt: skip
    first, second = connected(port), connected(port)
    try:
        partial(first, port, 65000, 60_000)
        last = partial(first, port, 65000, 40_000)  # the first connection: at its budget
        at = 100_000
        owner = first
        if process:
            owner, at = second, 150_000
            last = partial(second, port, 65000, 50_000)  # the process: at its budget
        wait_for(lambda: front_stats(executor)["buffered_bytes"] == at, "the bytes buffered")
        # exactly at the budget: new calls run (on either connection)
        assert call(first, port, frame(data="at"))[0] == "0"
        assert call(second, port, frame(data="at"))[0] == "0"
        # one byte over
        owner.h2.send_data(last, b"\x00")
        owner.flush()
        wait_for(lambda: front_stats(executor)["buffered_bytes"] == at + 1, "one byte more")
        refused = [first, second] if process else [first]
        for client in refused:
            status, message = call(client, port, frame(data="over"))
            assert status == "8" and "buffers" in message and "full" in message, message
        if not process:  # another connection under its budget goes on
            assert call(second, port, frame(data="on"))[0] == "0"
        stats = front_stats(executor)
        assert stats["refused_streams"] == len(refused), stats
        metrics = get_text(f"http://127.0.0.1:{executor.info['metrics_port']}/metrics")
        name = 'aios_executor_front_refused_total{what="streams"}'
        lines = [line for line in metrics.splitlines() if line.startswith(name)]
        assert lines and float(lines[0].split()[-1]) == len(refused), lines
        # the call over the budget goes away: new calls run again
        owner.h2.reset_stream(last)
        owner.flush()
        wait_for(lambda: front_stats(executor)["buffered_bytes"] < at, "the reset call's bytes")
        assert call(first, port, frame(data="again"))[0] == "0"
        assert call(second, port, frame(data="again"))[0] == "0"
    finally:
        first.close()
        second.close()
        executor.stop()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def test_a_client_that_reads_nothing_is_held_to_its_budget_and_its_memory_goes(echo):
    """8 streams on one connection, 40 tasks each answered with 1 MiB, never read
    (320 MiB if all ran): the front stops starting them past --connection-budget (16
    MiB) plus what was in flight, refuses the connection's new calls, and once the
    client has gone the memory goes back to the system with no task arriving since."""
    executor, port = native(echo, "--connection-budget", str(16 * MiB))
    client = connected(port)
    try:
        time.sleep(2.5)  # the start-up probe's memory released
        base = _rss_mb(executor.p.pid)
        body = grpc_body(frame(data='{"out_bytes": 1048576}'))
        for _ in range(8):
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, grpc_headers(port, "infer_stream"))
            send(client, sid, body * 40, end_stream=True)
        client.flush()  # and now it reads nothing

        def settled():
            _, data = mgmt(executor.info["mgmt_port"], "stats")
            accepted = data["data"]["tasks"]["accepted"]
            time.sleep(1.0)
            return (
                mgmt(executor.info["mgmt_port"], "stats")[1]["data"]["tasks"]["accepted"]
                == accepted
                and accepted > 1
            )

        wait_for(settled, "the executor to stop starting tasks", 60)
        _, data = mgmt(executor.info["mgmt_port"], "stats")
        ran = data["data"]["tasks"]["accepted"] - 1  # (the start-up probe)
        front = data["data"]["front"]
        assert ran < 320 and front["unsent_bytes"] < 160 * MiB, (ran, front)
        assert front["stalled_connections"] == 1 and front["stalls"] >= 1, front
        held = _rss_mb(executor.p.pid)
        # a new call on that connection: refused (read without taking any answer)
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, grpc_headers(port), end_stream=True)
        client.flush()
        statuses: dict[bytes, bytes] = {}

        def ended(event) -> bool:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                statuses.update(event.headers)
            return isinstance(event, h2.events.StreamEnded) and event.stream_id == sid

        client.events(ended, timeout=20)
        assert statuses.get(b"grpc-status") == b"8", statuses
        received = data["data"]["tasks"]["received"]
        client.close()
        assert held - base > 20, (base, held)  # it did hold memory
        wait_for(
            lambda: _rss_mb(executor.p.pid) - base < (held - base) / 2,
            f"the memory to be released (idle {base:.0f} MB, held {held:.0f} MB)",
            30,
        )
        _, data = mgmt(executor.info["mgmt_port"], "stats")
        assert data["data"]["tasks"]["received"] == received  # no task since: the same
        assert data["data"]["front"]["unsent_bytes"] == 0
    finally:
        client.close()
        executor.stop()


# ---------------------------------------------------------------- 5. connections


def test_handshake_timeout_cuts_silent_and_dribbling_connections(echo):
    executor, port = native(echo, "--handshake-timeout", "1")
    good = connected(port)
    try:
        silent = socket.create_connection(("127.0.0.1", port), timeout=20)
        dribbler = socket.create_connection(("127.0.0.1", port), timeout=20)
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        cut_at = None
        for k, byte in enumerate(preface):  # a byte every 0.25 s: 6 s for the preface
            try:
                dribbler.sendall(bytes([byte]))
            except OSError:
                cut_at = k
                break
            time.sleep(0.25)
        assert cut_at is not None and cut_at < len(preface), "the dribbler was not cut"
        silent.settimeout(20)
        data = b""
        while chunk := silent.recv(65536):  # the server's SETTINGS, then the close
            data += chunk
        stats = front_stats(executor)
        assert stats["handshake_timeouts"] == 2, stats
        # a client that finished its handshake stays, and is served
        assert call(good, port, frame(data="still here"))[0] == "0"
        silent.close()
        dribbler.close()
    finally:
        good.close()
        executor.stop()
    assert "did not send the HTTP/2 preface and SETTINGS in 1s: cut" in executor.p.stderr.read()


def test_the_connection_limit_refuses_clearly_and_serves_the_others(echo):
    executor, port = native(echo, "--max-connections", "3", "--handshake-timeout", "2")
    clients = [connected(port) for _ in range(3)]
    try:
        extra = socket.create_connection(("127.0.0.1", port), timeout=10)
        data = b""
        while chunk := extra.recv(65536):
            data += chunk
        extra.close()
        goaway = None
        while len(data) >= 9:  # frames: find the GOAWAY
            size, kind = int.from_bytes(data[:3], "big"), data[3]
            if kind == 7:
                goaway = data[9 : 9 + size]
            data = data[9 + size :]
        assert goaway is not None
        assert int.from_bytes(goaway[4:8], "big") == 0xB  # ENHANCE_YOUR_CALM
        assert goaway[8:] == b"too many connections"
        # the connections already open are served
        assert [call(c, port, frame(data="on"))[0] for c in clients] == ["0"] * 3
        assert front_stats(executor)["refused_connections"] == 1
        # one leaves: a new client gets in
        clients.pop().close()
        wait_for(lambda: front_stats(executor)["connections"] == 2, "the connection to close")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert ch.unary_unary("/InferenceProxy/infer")(frame(), timeout=10) is not None
        time.sleep(1.5)  # the sweep's log line (every 0.5 s here)
    finally:
        for c in clients:
            c.close()
        executor.stop()
    assert "connection(s) refused: 3 are open (--max-connections)" in executor.p.stderr.read()


# ---------------------------------------------------------------- 5. header list size


def _padded(port: int, size: int) -> list[tuple[str, str]]:
    """A request's headers whose list size (RFC 7541: name + value + 32 a field) is
    exactly ``size`` bytes."""
    headers = grpc_headers(port)
    used = sum(len(k) + len(v) + 32 for k, v in headers) + len("x-pad") + 32
    return [*headers, ("x-pad", "a" * (size - used))]


def test_header_list_exactly_at_and_just_over_16_kib(echo):
    executor, port = native(echo)
    client = connected(port)
    try:
        for size, want in ((16384, "0"), (16385, "8"), (70_000, "8"), (16384, "0")):
            headers = _padded(port, size)
            assert sum(len(k) + len(v) + 32 for k, v in headers) == size
            sid = client.h2.get_next_available_stream_id()
            client.h2.send_headers(sid, headers)
            client.h2.send_data(sid, grpc_body(frame()), end_stream=True)
            client.flush()
            status, message = status_of(client, sid)
            assert status == want, (size, status, message)
            if want == "8":
                assert f"header list of {size} bytes is over the limit of 16384" in message
        assert front_stats(executor)["oversized_headers"] == 2
    finally:
        client.close()
        executor.stop()
