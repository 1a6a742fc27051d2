"""What hostile clients make the native front hold (issue 23, items 1, 2 and 4): the
executor's RSS over its idle level while

- an unauthenticated client (a token is required; it has none) opens ``--streams`` 64
  calls on one connection and sends a 4 MiB message on each without ending the call
  (goal: + < 64 MB);
- a client that never reads its answers opens 32 ``infer_stream`` calls on one
  connection, each sending 64 tasks answered with 256 KiB (goal: + < 200 MB);
- and once that client has left, with no task since (item 4: memory released when idle).

    python -m bench.front_memory [--streams 64] [--size 4194304] [--readers 32]
                                 [--tasks 64] [--answer 262144] [--write]

Clients are raw HTTP/2 (the h2 package) that keep to flow control, as an attacker would
have to; RSS is /proc/PID/status VmRSS of the executor process; bytes held are the
native front's own books (/stats ``front``).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from ._timing import progress, publish

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.procs import frame, mgmt, start_executor, start_instance  # noqa: E402

MiB = 1 << 20
TOKEN = "infer-token-" + "x" * 24


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stats(executor) -> dict:
    status, body = mgmt(executor.info["mgmt_port"], "stats", token=TOKEN)
    assert status == 200, body
    return body["data"]


def connect(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    # the server's SETTINGS (stream windows) and its connection WINDOW_UPDATE
    settings = window = False
    while not (settings and window):
        for event in conn.receive_data(sock.recv(65536)):
            settings |= isinstance(event, h2.events.RemoteSettingsChanged)
            window |= isinstance(event, h2.events.WindowUpdated) and event.stream_id == 0
        sock.sendall(conn.data_to_send())
    return sock, conn


def headers(port: int, method: str, token: str | None = None) -> list[tuple[str, str]]:
    out = [(":method", "POST"), (":scheme", "http"), (":path", f"/InferenceProxy/{method}"),
           (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
           ("te", "trailers")]  # fmt: skip
    if token:
        out.append(("authorization", f"Bearer {token}"))
    return out


def unauthenticated(port: int, streams: int, size: int, seconds: float = 30.0):
    """Open ``streams`` calls without a token and push ``size`` bytes of one message on
    each (its prefix says size + 1: it never completes), keeping to flow control, until
    all is sent or the server refused the rest. Returns (socket, bytes sent, calls the
    server answered)."""
    sock, conn = connect(port)
    left = {}
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers(port, "infer_result"))
        left[sid] = b"\x00" + (size + 1).to_bytes(4, "big") + bytes(size)
    sent = answered = 0
    end = time.monotonic() + seconds
    while left and time.monotonic() < end:
        for sid in list(left):
            data = left[sid]
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                       len(data))  # fmt: skip
            try:
                while room > 0:
                    conn.send_data(sid, data[:room])
                    sent += room
                    data = data[room:]
                    room = min(conn.local_flow_control_window(sid),
                               conn.max_outbound_frame_size, len(data))  # fmt: skip
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                data = b""
            if data:
                left[sid] = data
            else:
                left.pop(sid)
        sock.settimeout(30)
        sock.sendall(conn.data_to_send())
        sock.settimeout(0.05)
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        if not chunk:
            break
        for event in conn.receive_data(chunk):
            if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                answered += isinstance(event, h2.events.StreamEnded)
                left.pop(event.stream_id, None)
        sock.settimeout(30)
        sock.sendall(conn.data_to_send())
    return sock, sent, answered


def non_reading(port: int, streams: int, tasks: int, answer: int):
    """Open ``streams`` infer_stream calls, send ``tasks`` tasks on each asking for
    ``answer``-byte answers, end them, and never read. Returns the socket."""
    sock, conn = connect(port)
    body = frame(data=f'{{"out_bytes": {answer}}}')
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    for _ in range(streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers(port, "infer_stream", TOKEN))
        conn.send_data(sid, message * tasks, end_stream=True)
    sock.sendall(conn.data_to_send())
    return sock


def settle(executor, key: str = "accepted", seconds: float = 40.0) -> None:
    """Until the executor's ``key`` count stops moving for two looks a second apart."""
    last, end = None, time.monotonic() + seconds
    while time.monotonic() < end:
        now = stats(executor)["tasks"][key]
        if now == last:
            return
        last = now
        time.sleep(1.0)


def run(opts) -> dict:
    tokens = Path(tempfile.mkstemp(suffix=".tokens")[1])
    tokens.write_text(f"* {TOKEN}\n")
    instance = start_instance("tests.blocks:ControlBlock", None, "--auth-file", str(tokens))
    res: dict = {}
    try:
        # 1. unauthenticated, on both fronts
        for name in ("native", "grpcio"):
            executor, port = start_executor({"i0": instance.info}, "--front", name,
                                            "--max-message", str(2 * opts.size), "--auth-file",
                                            str(tokens), token=TOKEN)  # fmt: skip
            try:
                time.sleep(2.5)  # the start-up probe's memory released
                pid = executor.p.pid
                before = rss_mb(pid)
                progress(f"front memory: {name}: {opts.streams} unauthenticated calls x "
                         f"{opts.size:,} B ...")  # fmt: skip
                sock, sent, answered = unauthenticated(port, opts.streams, opts.size)
                time.sleep(1.0)
                front = stats(executor).get("front", {})  # (not in executors before issue 23)
                res[f"unauth-{name}"] = {"before": before, "held": rss_mb(pid), "sent": sent,
                                         "answered": answered, "front": front}  # fmt: skip
                sock.close()
            finally:
                executor.stop()
        # 2. and 4. a client that does not read its answers, then leaves
        executor, port = start_executor({"i0": instance.info}, "--front", "native",
                                        "--auth-file", str(tokens), token=TOKEN)  # fmt: skip
        try:
            time.sleep(2.5)
            pid = executor.p.pid
            before = rss_mb(pid)
            progress(f"front memory: {opts.readers} streams x {opts.tasks} tasks x "
                     f"{opts.answer:,} B answers, never read ...")  # fmt: skip
            sock = non_reading(port, opts.readers, opts.tasks, opts.answer)
            settle(executor)
            time.sleep(1.0)
            held = rss_mb(pid)
            data = stats(executor)
            sock.close()
            time.sleep(6.0)  # the executor's idle memory release runs every 2 s
            res["nonreading"] = {"before": before, "held": held, "after": rss_mb(pid),
                                 "accepted": data["tasks"]["accepted"] - 1,
                                 "front": data.get("front", {}),
                                 "received_after": stats(executor)["tasks"]["received"]
                                 - data["tasks"]["received"]}  # fmt: skip
        finally:
            executor.stop()
    finally:
        instance.stop()
        tokens.unlink()
    return res


def render(res: dict, opts) -> str:
    n = res["nonreading"]
    nf = n["front"]
    rows = []
    for name in ("native", "grpcio"):
        u = res[f"unauth-{name}"]
        books = u["front"].get("buffered_bytes", "n/a")
        rows.append(
            f"| {name}: unauthenticated, {opts.streams} calls x {opts.size / MiB:g} MiB, never "
            f"ended ({u['sent'] / MiB:,.0f} MiB sent, {u['answered']} answered) | "
            f"{u['before']:.0f} MB | {u['held']:.0f} MB | {u['held'] - u['before']:+.0f} MB | "
            f"< +64 MB | buffered {books if name == 'native' else 'n/a'} B |")  # fmt: skip
    return "\n".join([
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}. Executor: 1 worker, defaults "
        "(--connection-budget 64 MiB, --front-budget 1 GiB); one ControlBlock instance; "
        "RSS of the executor process (VmRSS).",
        "",
        "| client | RSS idle | RSS while it holds on | + | goal | front's books |",
        "|---|---|---|---|---|---|",
        *rows,
        f"| native: never reads: {opts.readers} streams x {opts.tasks} tasks x "
        f"{opts.answer / 1024:g} KiB answers ({n['accepted']} run) | {n['before']:.0f} MB | "
        f"{n['held']:.0f} MB | {n['held'] - n['before']:+.0f} MB | < +200 MB | unsent "
        f"{nf.get('unsent_bytes', 0) / MiB:.1f} MiB, refused {nf.get('refused_streams', 'n/a')} "
        "calls |",
        f"| ... 6 s after it left, no task since ({n['received_after']} received) | "
        f"{n['before']:.0f} MB | {n['after']:.0f} MB | {n['after'] - n['before']:+.0f} MB | "
        "released | |",
    ]) + "\n"  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--size", type=int, default=4 * MiB)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--answer", type=int, default=256 * 1024)
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    res = run(opts)
    publish("Executor front: memory under hostile clients", "bench.front_memory",
            render(res, opts), opts.write, argv)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
