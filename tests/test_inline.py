"""Sync hooks run on the event loop once measured cheap (aios_fast.instance.inline)."""

from __future__ import annotations

import asyncio
import threading
import time

from aios_fast import codec
from aios_fast.block import Block
from aios_fast.instance import InstanceServer
from aios_fast.instance.inline import MAX_STREAK, WARMUP, InlineChooser


class Where(Block):
    """Records which thread ran each call; sleeps ``parameters['sleep']`` seconds."""

    def on_data(self, entry):
        self.threads.append(threading.get_ident())
        if self.parameters.get("sleep"):
            time.sleep(self.parameters["sleep"])
        return entry.data


class NeverInline(Where):
    inline = False


def _run(block: Block, n: int, budget: float = 0.0001) -> list[bool]:
    """Whether each of n sequential tasks ran on the loop's thread."""
    block.threads = []  # type: ignore[attr-defined]

    async def run():
        server = InstanceServer(block, inline_budget=budget)
        loop_thread = threading.get_ident()
        frame = codec.encode_message(codec.encode_packet(codec.Packet(data="x")))
        for _ in range(n):
            await server.run_task(frame)
        return [t == loop_thread for t in block.threads]  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_a_cheap_sync_hook_moves_onto_the_loop_after_the_warmup():
    # a budget of a second: the hook is a return statement, and a loaded CI machine
    # once took over 100 us for one of the warmup calls
    on_loop = _run(Where(), WARMUP + 10, budget=1.0)
    assert on_loop == [False] * WARMUP + [True] * 10


def test_a_slow_hook_a_declared_one_and_a_zero_budget_stay_in_threads():
    assert not any(_run(Where(parameters={"sleep": 0.002}), WARMUP + 5, budget=0.001))
    assert not any(_run(NeverInline(), WARMUP + 5))
    assert not any(_run(Where(), WARMUP + 5, budget=0.0))


def test_a_hook_that_turns_slow_goes_back_to_threads_and_needs_twice_the_streak():
    chooser = InlineChooser(0.001, None)
    for _ in range(WARMUP):
        chooser.observe(0.0005)
    assert chooser.inline
    chooser.observe(0.0011)  # just over the budget, once
    assert not chooser.inline and chooser.switches == 2
    for _ in range(2 * WARMUP - 1):
        chooser.observe(0.001)  # exactly at the budget counts as cheap
    assert not chooser.inline
    chooser.observe(0.001)
    assert chooser.inline
    for _ in range(20):  # flapping: the streak it needs doubles up to MAX_STREAK
        chooser.observe(1.0)
        for _ in range(MAX_STREAK):
            chooser.observe(0.0)
    assert chooser._needed == MAX_STREAK and chooser.inline


class AsyncSleep(Block):
    async def on_data(self, entry):
        if self.parameters.get("raise"):
            raise TimeoutError("the block's own")
        await asyncio.sleep(self.parameters.get("sleep", 0))
        return entry.data


class ThreadSleep(Block):
    inline = False

    def on_data(self, entry):
        time.sleep(self.parameters.get("sleep", 0))
        return entry.data


def _timed_run(block: Block, run_timeout: float):
    """(the exception or None, seconds it took, the instance's timed_out count)."""

    async def run():
        from aios_fast.errors import TaskTimedOut

        server = InstanceServer(block)
        frame = codec.encode_message(codec.encode_packet(codec.Packet(data="x")))
        try:  # warm: the hook's kind is known
            await server.run_task(frame, run_timeout=5.0)
        except TimeoutError:
            pass
        t0 = time.perf_counter()
        try:
            await server.run_task(frame, run_timeout=run_timeout)
            exc = None
        except (TaskTimedOut, TimeoutError) as e:
            exc = e
        return exc, time.perf_counter() - t0, server.outcomes.timed_out

    return asyncio.run(run())


def test_a_run_timeout_stops_a_hook_on_the_loop_and_does_not_wait_for_a_thread():
    from aios_fast.errors import TaskTimedOut

    exc, took, timed_out = _timed_run(AsyncSleep(parameters={"sleep": 2.0}), 0.05)
    assert isinstance(exc, TaskTimedOut) and took < 1.0 and timed_out == 1
    # a thread cannot be stopped: the task is answered at the timeout all the same
    exc, took, timed_out = _timed_run(ThreadSleep(parameters={"sleep": 1.0}), 0.05)
    assert isinstance(exc, TaskTimedOut) and took < 0.5 and timed_out == 1


def test_a_blocks_own_timeout_error_is_not_a_run_timeout():
    exc, _, timed_out = _timed_run(AsyncSleep(parameters={"raise": True}), 5.0)
    assert type(exc) is TimeoutError and str(exc) == "the block's own" and timed_out == 0
