"""The health checker and the auto-scaler against real executor and instance processes
(the sidecars themselves run in the test's event loop, as ``block up`` runs them)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter

import aiohttp
import grpc
import pytest

from aios_fast import codec
from aios_fast.sidecars.actuator import LocalActuator
from aios_fast.sidecars.autoscale import AutoScaler
from aios_fast.sidecars.healthcheck import HealthChecker

from .policies import health_recorder
from .procs import ROOT, Proc, frame, free_port, http, mgmt, start_executor, start_instance


async def until(check, timeout: float = 15.0, what: str = "condition"):
    """Await check() (sync or async) until it returns a truthy value."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def served_by(port: int, n: int = 30) -> Counter:
    seen = Counter()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        rpc = ch.unary_unary("/InferenceProxy/infer_result")
        outs = await asyncio.gather(*(rpc(frame(f"s{i}", i), timeout=10) for i in range(n)))
    for out in outs:
        seen[codec.decode_message(out).data] += 1
    return seen


async def amgmt(port: int, action: str, data: dict | None = None) -> tuple[int, dict]:
    """POST /mgmt without blocking the loop (the sidecar under test serves on it)."""
    async with aiohttp.ClientSession() as session:
        body = {"mgmt_action": action, "mgmt_data": data or {}}
        async with session.post(f"http://127.0.0.1:{port}/mgmt", json=body) as resp:
            return resp.status, await resp.json()


def rows(mgmt_port: int) -> dict:
    status, body = mgmt(mgmt_port, "list_instances")
    assert status == 200
    return {row["id"]: row for row in body["data"]}


def test_health_checker_takes_unhealthy_instances_out_and_puts_them_back():
    a_grpc, a_mgmt = free_port(), free_port()
    args = ("--port", str(a_grpc), "--mgmt-port", str(a_mgmt))
    a = start_instance("tests.blocks:NameBlock", {"name": "a"}, *args)
    b = start_instance("tests.blocks:NameBlock", {"name": "b"})
    executor, port = start_executor({"a": a.info, "b": b.info})
    mp = executor.info["mgmt_port"]
    health_recorder.CALLS.clear()

    async def scenario():
        checker = HealthChecker(
            f"http://127.0.0.1:{mp}",
            interval=0.1,
            timeout=0.5,
            policy={"policyRuleURI": "tests.policies.health_recorder"},
            block_data={"id": "block-under-test"},
        )
        await checker.start("127.0.0.1", 0)
        try:
            await until(lambda: checker.rounds >= 2, what="two rounds")
            assert await served_by(port) == {"a": 15, "b": 15}
            call = health_recorder.CALLS[-1]
            assert call["input"] == {
                "health_check_data": {"a": True, "b": True},
                "instances": ["a", "b"],
            }
            assert call["block_id"] == "block-under-test"

            # Alive but reporting unhealthy: its link stays up, yet it gets no tasks.
            status, _ = http(
                f"http://127.0.0.1:{b.info['mgmt_port']}/mgmt",
                {"mgmt_action": "update_parameters", "mgmt_data": {"healthy": False}},
            )
            assert status == 200
            await until(lambda: not rows(mp)["b"]["healthy"], what="b marked unhealthy")
            assert rows(mp)["b"]["up"] is True
            assert await served_by(port) == {"a": 30}
            http(
                f"http://127.0.0.1:{b.info['mgmt_port']}/mgmt",
                {"mgmt_action": "update_parameters", "mgmt_data": {"healthy": True}},
            )
            await until(lambda: rows(mp)["b"]["healthy"], what="b healthy again")
            assert await served_by(port) == {"a": 15, "b": 15}

            # Killed: unhealthy (no answer); restarted on the same ports: back in.
            a.p.send_signal(signal.SIGKILL)
            a.p.wait()
            await until(lambda: not rows(mp)["a"]["healthy"], what="a marked unhealthy")
            assert checker.records["a"]["error"].startswith("GET http://127.0.0.1:")
            # The policy runs in a thread after the round that marked a: wait for its record.
            await until(
                lambda: (
                    health_recorder.CALLS[-1]["input"]["health_check_data"]
                    == {"a": False, "b": True}
                ),
                what="the policy's record of a down",
            )
            assert await served_by(port) == {"b": 30}
            status, body = await amgmt(checker.port, "counters")  # the policy's own action
            assert status == 200 and body["data"]["a"] >= 1
            restarted = start_instance("tests.blocks:NameBlock", {"name": "a"}, *args)
            try:
                await until(lambda: rows(mp)["a"]["healthy"] and rows(mp)["a"]["up"], what="a back")
                assert await served_by(port) == {"a": 15, "b": 15}
            finally:
                restarted.stop()

            # A failing policy is counted; the checks go on.
            status, _ = await amgmt(
                checker.port, "set_policy_parameters", {"parameters": {"explode": True}}
            )
            assert status == 200
            rounds = checker.rounds
            await until(
                lambda: checker.policy_errors >= 2 and checker.rounds > rounds + 2,
                what="rounds with a failing policy",
            )
            status, body = await amgmt(checker.port, "status")
            assert status == 200 and "RuntimeError: policy bug" in body["data"]["last_error"]
            status, body = await amgmt(checker.port, "run_now")
            assert status == 200 and body["data"]["health_check_data"]["b"] is True
            assert (await amgmt(checker.port, "set_interval", {"interval": 0}))[0] == 400
            assert (await amgmt(checker.port, "nope"))[0] == 400  # policy raises ValueError
        finally:
            await checker.stop()

    try:
        asyncio.run(scenario())
    finally:
        executor.stop()
        a.stop()
        b.stop()


@pytest.fixture
def bare_executor():
    """An executor process with no instances (the auto-scaler brings them)."""
    port = free_port()
    proc = Proc(
        [
            "-m",
            "aios_fast.executor",
            "--port",
            str(port),
            "--workers",
            "1",
            "--mgmt-port",
            "0",
            "--metrics-port",
            "-1",
            "--instance-inflight",
            "64",
        ]
    )
    yield port, proc.info["mgmt_port"]
    proc.stop()


def test_autoscaler_scales_up_under_load_and_down_when_idle(bare_executor, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the actuator's instances import tests.*
    port, mp = bare_executor
    actuator = LocalActuator(
        "tests.blocks:SleepBlock", block_id="sleepy", parameters={"delay": 0.05}
    )
    seen_counts: list[int] = []

    async def scenario():
        scaler = AutoScaler(
            f"http://127.0.0.1:{mp}",
            actuator,
            min_instances=1,
            max_instances=3,
            interval=0.25,
            drain_timeout=10,
            policy={
                "policyRuleURI": "builtin:target",
                "parameters": {"target_inflight": 4, "scale_down_after": 2},
            },
        )
        await scaler.start("127.0.0.1", 0)
        stop_load = asyncio.Event()

        async def load():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                rpc = ch.unary_unary("/InferenceProxy/infer_result")

                async def client(k):
                    i = 0
                    while not stop_load.is_set():
                        i += 1
                        try:
                            await rpc(frame(f"c{k}", i), timeout=10)
                        except grpc.aio.AioRpcError:
                            await asyncio.sleep(0.05)  # no instance yet

                await asyncio.gather(*(client(k) for k in range(32)))

        def count() -> int:
            n = len(rows(mp))
            seen_counts.append(n)
            return n

        try:
            await until(lambda: count() == 1, what="min_instances started")
            seen_counts.clear()  # from here on, within the bounds
            loader = asyncio.ensure_future(load())
            await until(lambda: count() == 3, timeout=30, what="scaled up to 3")
            await asyncio.sleep(1.0)  # still under load: stays at max_instances
            assert count() == 3
            assert scaler.last_round["operation"] in ("upscale", "skip")
            stop_load.set()
            await loader
            await until(lambda: count() == 1, timeout=30, what="scaled down to 1")
            await asyncio.sleep(1.0)  # idle: stays at min_instances
            assert count() == 1 and len(actuator.procs) == 1

            async def downscaled():  # counted once its process has stopped (a drain)
                status, body = await amgmt(scaler.port, "status")
                assert status == 200
                return body["data"]["downscaled"] >= 2 and body["data"]

            data = await until(downscaled, what="both downscales counted")
            assert data["upscaled"] == 3 and data["downscaled"] == 2

            assert max(seen_counts) == 3 and min(seen_counts) == 1

            # A killed instance is taken out and replaced (min_instances).
            (only,) = actuator.procs.values()
            os.kill(only.pid, signal.SIGKILL)
            await until(
                lambda: (
                    only.pid not in {p.pid for p in actuator.procs.values()}
                    and count() == 1
                    and all(r["up"] for r in rows(mp).values())
                ),
                timeout=30,
                what="the killed instance replaced",
            )
            # Manual decisions go through the same bounds.
            status, body = await amgmt(
                scaler.port, "scale", {"operation": "upscale", "instances_count": 5}
            )
            assert status == 200 and len(body["data"]["added"]) == 2 and body["data"]["bounded"]
            assert (await amgmt(scaler.port, "scale", {"operation": "sideways"}))[0] == 400
            bounds = {"min_instances": 3, "max_instances": 2}
            assert (await amgmt(scaler.port, "set_bounds", bounds))[0] == 400
        finally:
            await scaler.stop()
            await actuator.stop_all()

    asyncio.run(scenario())


def test_autoscaler_survives_a_failing_or_garbage_policy(bare_executor, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    _, mp = bare_executor
    actuator = LocalActuator("aios_fast.block:EchoBlock")

    async def scenario():
        scaler = AutoScaler(
            f"http://127.0.0.1:{mp}",
            actuator,
            min_instances=1,
            max_instances=2,
            interval=0.1,
            policy={
                "policyRuleURI": "tests.policies.sticky_module:Misbehaving",
                "parameters": {"answer": "raise"},
            },
        )
        await scaler.start("127.0.0.1", 0)
        try:
            await until(lambda: scaler.policy_errors >= 2, what="policy errors counted")
            for answer in (
                {"operation": "upscale", "instances_count": "two"},
                "nonsense",
                {"operation": "teleport"},
            ):
                await amgmt(
                    scaler.port, "set_policy_parameters", {"parameters": {"answer": answer}}
                )
                errors = scaler.policy_errors
                await until(lambda e=errors: scaler.policy_errors > e, what=f"{answer} refused")
            assert len(rows(mp)) == 1  # min_instances kept, nothing else done
        finally:
            await scaler.stop()
            await actuator.stop_all()

    asyncio.run(scenario())
