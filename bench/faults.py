"""Fault benchmark: what callers see when things go wrong under load.

    python -m bench.faults [--duration 4] [--link native|tcp|grpc] [--write]

Each fault runs against fresh processes on this machine: an executor (task timeout 2 s,
keepalive 0.5 s) and two instances of the test ControlBlock, with 64 tasks kept in flight
(three in four ``infer_result``, one in four the seeds' ``infer``, each sleeping 20 ms
in the block). The fault strikes one second in. Per fault: tasks sent, answered OK,
failed by status, failures of tasks the fault had nothing to do with ("unrelated"), and
silent losses: an ``infer_result`` answered with the wrong output, or an accepted
``infer`` task the executor neither completed nor reported (failed / lost) once idle.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import sys
import time
from pathlib import Path

import grpc

from aios_fast import codec, wire

from ._timing import progress, publish

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.procs import frame, mgmt, start_executor, start_instance  # noqa: E402

CONTROL = "tests.blocks:ControlBlock"
INFLIGHT = 64


class Tally:
    def __init__(self) -> None:
        self.sent = self.ok = self.unrelated = self.silent = 0
        self.failed: collections.Counter = collections.Counter()

    def row(self, name: str) -> str:
        failed = ", ".join(f"{code} {n:,}" for code, n in sorted(self.failed.items())) or "0"
        return (f"| {name} | {self.sent:,} | {self.ok:,} | {failed} | {self.unrelated:,} "
                f"| {self.silent:,} |")  # fmt: skip


async def drive(port: int, seconds: float, tally: Tally, make_task, strike,
                target: str | None) -> None:  # fmt: skip
    """Keep INFLIGHT tasks going for ``seconds``; ``strike()`` runs one second in.
    ``make_task(i)`` -> (method, data dict, timeout, expected status or None). A failure
    whose message names ``target`` (the instance struck) is the fault's own."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as ch:
        counter = iter(range(1 << 30))
        end = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                i = next(counter)
                method, data, timeout, expected = make_task(i)
                body = json.dumps(data)
                tally.sent += 1
                try:
                    reply = await ch.unary_unary(f"/InferenceProxy/{method}")(
                        frame("f", i, body), timeout=timeout
                    )
                except grpc.aio.AioRpcError as exc:
                    tally.failed[exc.code().name] += 1
                    mine = target is not None and target in (exc.details() or "")
                    if expected is None and not mine:
                        tally.unrelated += 1
                    continue
                if method == "infer_result" and "out_bytes" not in data:
                    if codec.decode_message(reply).data != body:
                        tally.silent += 1
                        continue
                tally.ok += 1

        async def fault() -> None:
            await asyncio.sleep(1.0)
            await strike()

        await asyncio.gather(fault(), *(worker() for _ in range(INFLIGHT)))


def plain(i: int):
    method = "infer" if i % 4 == 0 else "infer_result"
    return method, {"sleep": 0.02, "i": i}, 10.0, None


def unaccounted(executor) -> int:
    """Accepted tasks the executor neither completed nor reported, once idle."""
    port = executor.info["mgmt_port"]
    for _ in range(200):
        data = mgmt(port, "stats")[1]["data"]
        if data["inflight"] == 0 and all(r["inflight"] == 0 for r in data["instances"].values()):
            break
        time.sleep(0.05)
    t = data["tasks"]  # cancelled: accepted tasks whose caller gave up (told so by grpc)
    left = {
        "received": t["received"] - t["invalid"] - t["rejected"] - t["withdrawn"] - t["accepted"],
        "accepted": t["accepted"] - t["completed"] - t["failed"] - t["lost"] - t["cancelled"],
    }
    if left["received"] or left["accepted"] < 0:  # the books themselves are wrong: never clamp
        raise SystemExit(f"faults: the executor's books do not balance: {left} ({t})")
    return left["accepted"]


LINK = ["native"]  # the executor's --link (main sets it)


def scenario(name: str, seconds: float, make_task, strike_on=None) -> str:
    progress(f"faults: {name} ...")
    instances = [start_instance(CONTROL), start_instance(CONTROL)]
    executor, port = start_executor(
        {f"i{k}": p.info["port"] for k, p in enumerate(instances)},
        "--task-timeout", "2", "--link-keepalive", "0.5", "--link", LINK[0],
    )  # fmt: skip
    tally = Tally()
    try:

        async def strike() -> None:
            if strike_on is not None:
                strike_on(instances[0])

        target = "i0" if strike_on is not None else None
        asyncio.run(drive(port, seconds, tally, make_task, strike, target))
        if instances[0].p.poll() is None:
            instances[0].signal(signal.SIGCONT)
        tally.silent += unaccounted(executor)
    finally:
        executor.stop()
        for p in instances:
            p.signal(signal.SIGCONT)
            p.stop()
    return tally.row(name)


def burst(n: int = 10_000) -> str:
    progress(f"faults: a burst of {n:,} calls ...")
    instances = [start_instance(), start_instance()]
    executor, port = start_executor({f"i{k}": p.info["port"] for k, p in enumerate(instances)},
                                    "--link", LINK[0])  # fmt: skip
    tally = Tally()
    try:

        async def run() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                rpc = ch.unary_unary("/InferenceProxy/infer_result")

                async def one(i: int) -> None:
                    tally.sent += 1
                    try:
                        reply = await rpc(frame("b", i, str(i)), timeout=120)
                    except grpc.aio.AioRpcError as exc:
                        tally.failed[exc.code().name] += 1
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            tally.unrelated += 1
                        return
                    if codec.decode_message(reply).data != str(i):
                        tally.silent += 1
                    else:
                        tally.ok += 1

                await asyncio.gather(*(one(i) for i in range(n)))

        asyncio.run(run())
        tally.silent += unaccounted(executor)
    finally:
        executor.stop()
        for p in instances:
            p.stop()
    return tally.row(f"burst of {n:,} concurrent calls")


def run(opts) -> str:
    d = opts.duration

    def raising(i: int):
        if i % 10 == 3:
            return "infer_result", {"fail": True}, 10.0, "INTERNAL"
        return plain(i)

    def slow_with_deadlines(i: int):
        if i % 3 == 0:
            return "infer_result", {"sleep": 1.5, "i": i}, 0.5, "DEADLINE_EXCEEDED"
        return "infer_result", {"sleep": 0.02, "i": i}, 5.0, None

    big_sent = {"in": False, "out": False}

    def large(i: int):
        if i == 100 and not big_sent["in"]:
            big_sent["in"] = True
            return "infer_result", {"pad": "x" * (wire.MAX_MESSAGE - 200)}, 30.0, None
        if i == 101 and not big_sent["out"]:
            big_sent["out"] = True
            return "infer_result", {"out_bytes": 5 << 20}, 30.0, "RESOURCE_EXHAUSTED"
        return plain(i)

    rows = [
        scenario("instance kill -9", d, plain, lambda p: p.p.kill()),
        scenario("instance SIGSTOP", d, plain, lambda p: p.signal(signal.SIGSTOP)),
        scenario("instance SIGTERM (drain)", d, plain, lambda p: p.signal(signal.SIGTERM)),
        scenario("block raises on 1 task in 10", d, raising),
        scenario("1 task in 3 slow (1.5 s), 0.5 s deadlines", d, slow_with_deadlines),
        scenario("4 MiB task and 5 MiB output among 64 in flight", d, large),
        burst(),
    ]
    lines = [
        f"Each fault against fresh processes: an executor (--link {LINK[0]}, --task-timeout 2, "
        "--link-keepalive 0.5) and two ControlBlock instances, 64 tasks in flight (3 in 4 "
        f"infer_result, 1 in 4 infer) for {d:g} s, the fault one second in. 'unrelated': "
        "failures of tasks the fault did not aim at (for an instance fault, failures of "
        "tasks that instance had already taken are counted there: they are the fault's); "
        "'silent': wrong answers plus accepted infer tasks never completed nor reported.",
        "",
        "| fault | sent | OK | failed (by status) | unrelated | silent |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--link", default="native", choices=("native", "tcp", "grpc"),
                        help="the executor's instance links (default: native)")  # fmt: skip
    opts = parser.parse_args(argv)
    LINK[0] = opts.link
    publish("Faults", "bench.faults", run(opts), opts.write, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
