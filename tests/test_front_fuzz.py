"""Fuzzing the native gRPC front with random HTTP/2 frames: valid-looking gRPC requests
mixed with random frames, flags, stream ids, window updates, settings, header lists
around the advertised limit and garbage, with budgets small enough to be crossed, for
a bounded time (``AIOS_FAST_FUZZ_SECONDS``, default 8; ``AIOS_FAST_FUZZ_SEED`` repeats a
run). The executor must answer or close each connection, never crash or log a
traceback, and keep serving real clients."""

from __future__ import annotations

import os
import random
import socket
import time

import grpc
import hpack
import pytest

from aios_fast import codec
from aios_fast.executor.native_front import unavailable

from .procs import frame, start_executor, start_instance

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SECONDS = float(os.environ.get("AIOS_FAST_FUZZ_SECONDS", "8"))
PATHS = ("/InferenceProxy/infer", "/InferenceProxy/infer_result",
         "/InferenceProxy/infer_stream", "/InferenceProxy/nope", "/", "")  # fmt: skip


def h2frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes([kind & 0xFF, flags & 0xFF])
            + (stream & 0xFFFFFFFF).to_bytes(4, "big") + payload)  # fmt: skip


def grpc_message(rng: random.Random) -> bytes:
    body = frame("fz", rng.randrange(1000), "x" * rng.randrange(50))
    if rng.random() < 0.3:
        body = rng.randbytes(rng.randrange(40))
    flag = 0 if rng.random() < 0.8 else rng.randrange(256)
    size = len(body) if rng.random() < 0.8 else rng.randrange(1 << 32)
    return bytes([flag]) + size.to_bytes(4, "big") + body


def headers_block(rng: random.Random) -> bytes:
    fields = [(":method", rng.choice(("POST", "POST", "GET", "PUT"))), (":scheme", "http"),
              (":path", rng.choice(PATHS)), (":authority", "fuzz"),
              ("content-type", rng.choice(("application/grpc", "application/grpc+proto",
                                           "text/plain", "application/grpcx"))),
              ("te", "trailers")]  # fmt: skip
    if rng.random() < 0.3:
        fields.append(("grpc-timeout", rng.choice(("1S", "10m", "0n", "99999999H", "x", "5"))))
    if rng.random() < 0.2:
        fields.append(("grpc-encoding", rng.choice(("gzip", "identity", "zz"))))
    if rng.random() < 0.2:
        rng.shuffle(fields)  # pseudo-headers after regular ones: malformed
    if rng.random() < 0.1:
        fields.append((":bogus", "1"))
    if rng.random() < 0.1:  # around and past the advertised header list size (16 KiB)
        size = rng.choice((16000, 16200, 16300, 17000, 40000))
        fields.append(("x-pad", rng.randbytes(size // 2).hex()))
    return hpack.Encoder().encode(fields)


def random_frame(rng: random.Random, streams: list[int]) -> bytes:
    sid = rng.choice(streams) if rng.random() < 0.85 else rng.choice((0, 2, 4, 1 << 31, 7))
    pick = rng.random()
    if pick < 0.25:  # a request's HEADERS
        flags = 0x4 | (0x1 if rng.random() < 0.2 else 0) | (0x8 if rng.random() < 0.05 else 0)
        block = headers_block(rng)
        if len(block) > 16000:  # HEADERS, then CONTINUATIONs (frames of at most 16 KiB)
            parts = [block[k : k + 16000] for k in range(0, len(block), 16000)]
            return h2frame(1, flags & ~0x4 & ~0x8, sid, parts[0]) + b"".join(
                h2frame(9, 0x4 if k == len(parts) - 1 else 0, sid, part)
                for k, part in enumerate(parts[1:], 1))  # fmt: skip
        if flags & 0x8:  # padded
            pad = rng.randrange(20)
            block = bytes([pad]) + block + bytes(pad)
        return h2frame(1, flags, sid, block)
    if pick < 0.5:  # DATA: gRPC messages, maybe cut
        data = b"".join(grpc_message(rng) for _ in range(rng.randrange(1, 4)))
        if rng.random() < 0.15:  # a large message's first 16 KB: buffered (budgets)
            data = b"\x00" + rng.randrange(16000, 16385).to_bytes(4, "big") + bytes(15995)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        return h2frame(0, 0x1 if rng.random() < 0.5 else 0, sid, data)
    if pick < 0.58:
        return h2frame(3, 0, sid, rng.randrange(16).to_bytes(4, "big"))  # RST_STREAM
    if pick < 0.66:  # WINDOW_UPDATE, including 0 and overflowing increments
        inc = rng.choice((0, 1, 65535, (1 << 31) - 1, rng.randrange(1 << 31)))
        return h2frame(8, 0, rng.choice((0, sid)), inc.to_bytes(4, "big"))
    if pick < 0.72:  # SETTINGS, valid or not
        body = b"".join(rng.randrange(10).to_bytes(2, "big")
                        + rng.choice((0, 1, 16384, 1 << 24, (1 << 32) - 1)).to_bytes(4, "big")
                        for _ in range(rng.randrange(4)))  # fmt: skip
        if rng.random() < 0.2:
            body += b"\x00"
        return h2frame(4, rng.choice((0, 0, 1)), rng.choice((0, 0, sid)), body)
    if pick < 0.77:
        return h2frame(6, rng.choice((0, 1)), rng.choice((0, 0, sid)), rng.randbytes(
            rng.choice((8, 8, 7, 9))))  # fmt: skip  # PING
    if pick < 0.8:
        return h2frame(9, rng.choice((0, 4)), sid, headers_block(rng)[:10])  # CONTINUATION
    if pick < 0.83:
        return h2frame(7, 0, 0, rng.randbytes(8))  # GOAWAY
    if pick < 0.86:
        return h2frame(2, 0, sid, rng.randbytes(rng.choice((5, 5, 4))))  # PRIORITY
    if pick < 0.95:  # anything
        return h2frame(rng.randrange(256), rng.randrange(256), sid,
                       rng.randbytes(rng.randrange(64)))  # fmt: skip
    return rng.randbytes(rng.randrange(1, 200))  # not even a frame


def one_connection(port: int, rng: random.Random) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        out = PREFACE + h2frame(4, 0, 0, b"") if rng.random() < 0.95 else rng.randbytes(30)
        streams = [1, 3, 5, 7, 9]
        out += b"".join(random_frame(rng, streams) for _ in range(rng.randrange(1, 25)))
        try:
            sock.sendall(out)
            sock.settimeout(0.2)
            while sock.recv(65536):  # until closed or quiet
                pass
        except (TimeoutError, ConnectionError):
            pass


def serves(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        answer = ch.unary_unary("/InferenceProxy/infer_result")(frame(data="alive"), timeout=10)
    return codec.decode_message(answer).data == "alive"


def test_random_frames_never_break_the_native_front():
    if why := unavailable():
        pytest.skip(f"native front not available: {why}")
    seed = int(os.environ.get("AIOS_FAST_FUZZ_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    instance = start_instance()
    # small budgets, so that requests and answers cross them (stalls, refusals, relief)
    executor, port = start_executor({"i0": instance.info["port"]}, "--front", "native",
                                    "--max-message", "16384", "--connection-budget", "20000",
                                    "--front-budget", "40000")  # fmt: skip
    try:
        end = time.monotonic() + SECONDS
        rounds = 0
        while time.monotonic() < end:
            one_connection(port, rng)
            rounds += 1
            if rounds % 50 == 0:
                assert executor.p.poll() is None, f"seed {seed}: executor died"
                assert serves(port), f"seed {seed}"
        assert executor.p.poll() is None, f"seed {seed}: executor died"
        assert serves(port), f"seed {seed}"
    finally:
        executor.stop()
        instance.stop()
    errors = executor.p.stderr.read()
    assert "Traceback" not in errors and "Fatal" not in errors, f"seed {seed}:\n{errors[-3000:]}"
    assert rounds > 20
