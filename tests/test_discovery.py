"""Instances that register in Redis join and leave an executor's balancer on their own."""

from __future__ import annotations

import json
import signal
import time

import grpc

from aios_fast import codec

from .procs import Proc, frame, start_executor
from .redis_server import redis_url  # noqa: F401 - fixture


def registered_instance(url: str, name: str, ttl: float = 1.0) -> Proc:
    return Proc(["-m", "aios_fast.instance", "--block", "tests.blocks:NameBlock",
                 "--parameters", json.dumps({"name": name}), "--register", url,
                 "--block-id", "b1", "--instance-id", name, "--ttl", str(ttl)])  # fmt: skip


def names(port: int, n: int = 40) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        rpc = ch.unary_unary("/InferenceProxy/infer_result")
        return {codec.decode_message(rpc(frame("d", i), timeout=10)).data for i in range(n)}


def wait_for(predicate, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_instances_join_and_leave_through_redis(redis_url):  # noqa: F811
    first = registered_instance(redis_url, "alpha")
    executor, port = start_executor(
        {}, "--discover", redis_url, "--block-id", "b1", "--discover-interval", "0.2"
    )
    second = None

    def serving(expected: set[str]) -> bool:
        # UNAVAILABLE until a discovered instance's link is up, or while calls race a
        # death (reported, never silent)
        try:
            return names(port) == expected
        except grpc.RpcError:
            return False

    try:
        wait_for(lambda: serving({"alpha"}))
        second = registered_instance(redis_url, "beta")
        wait_for(lambda: names(port) == {"alpha", "beta"})
        first.p.send_signal(signal.SIGKILL)  # dies without deregistering: the TTL expires
        first.p.wait()
        wait_for(lambda: serving({"beta"}))  # then beta serves alone
        second.stop()  # a clean stop deregisters at once

        def none_left():
            try:
                names(port, 1)
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.UNAVAILABLE
            return False

        wait_for(none_left)
    finally:
        executor.stop()
        first.stop()
        if second is not None:
            second.stop()
