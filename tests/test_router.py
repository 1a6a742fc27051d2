"""The router, host set, outlier detector and reconcile in process, over fake links
(tests/fakes.py): placement, retries, returned and lost tasks, cancellation, deadlines,
ejection, drain, limits, reconcile, and the books (every received task ends counted
once, in exactly the outcome the router's identities name). No process, no socket."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from aios_fast import codec
from aios_fast.executor.config import InstanceSpec
from aios_fast.executor.links import TaskFailed, TaskTimedOut
from aios_fast.executor.reconcile import Reconciler
from aios_fast.wire import ACCEPTED
from tests.fakes import Upstream, frame


def _books_exact(up: Upstream) -> None:
    assert up.router.inflight == 0
    assert up.router.books() == {"received": 0, "accepted": 0}, up.router.stats


def test_round_robin_placement_and_answers():
    up = Upstream(3)
    for i in range(6):
        up.run(frame(seq=i))
    assert [link.inflight for link in up.links()] == [2, 2, 2]
    assert up.router.inflight == 6
    for link, task in up.open_tasks():
        link.echo(task)
    assert len(up.outcomes) == 6 and all(r is None for _, r in up.outcomes)
    answers = sorted(codec.decode_message(a).seq_no for a, _ in up.outcomes)
    assert answers == list(range(6))
    assert up.router.stats["completed"] == 6 and up.router.stats["accepted"] == 6
    assert all(up.hosts.balancer.state(i)["outstanding"] == 0 for i in ("i0", "i1", "i2"))
    _books_exact(up)


def test_a_refused_task_is_retried_elsewhere_then_rejected_past_max_retries():
    up = Upstream(3, max_retries=2)
    for link in up.links():
        link.refuse_next = 1
    up.run(frame())  # i0 refuses, i1 refuses, i2 refuses: 1 try + 2 retries
    [(answer, reject)] = up.outcomes
    assert answer is None and reject.code == grpc.StatusCode.UNAVAILABLE
    assert "no instance accepted the task" in reject.message
    assert up.router.stats["retried"] == 2 and up.router.stats["rejected"] == 1
    up.link("i0").refuse_next = 1
    up.run(frame())  # refused once, then taken
    [(link, task)] = up.open_tasks()
    link.echo(task)
    assert up.outcomes[-1][1] is None and up.router.stats["retried"] == 3
    _books_exact(up)


def test_infer_is_answered_at_acceptance_and_its_end_is_counted_later():
    up = Upstream(1)
    up.run(frame(), want_result=False)
    [(link, task)] = up.open_tasks()
    assert up.outcomes == []
    link.ack(task)
    assert up.outcomes == [(ACCEPTED, None)]
    assert up.router.inflight == 0  # the caller is answered; the task is the link's
    link.echo(task)
    assert up.router.stats["completed"] == 1 and len(up.outcomes) == 1
    up.run(frame(), want_result=False)
    [(link, task)] = up.open_tasks()
    link.ack(task)
    link.lose(task)  # after acceptance: counted lost, nobody to tell
    assert up.router.stats["lost"] == 1
    _books_exact(up)


def test_a_task_given_back_is_placed_again_and_accepted_once():
    up = Upstream(2)
    up.run(frame())
    [(link, task)] = up.open_tasks()
    link.ack(task)
    link.give_back(task)  # the instance is leaving: placed on the other, fresh retries
    [(other, again)] = up.open_tasks()
    assert other is not link
    other.echo(again)
    assert up.outcomes[-1][1] is None
    s = up.router.stats
    assert (s["accepted"], s["retried"], s["completed"]) == (1, 1, 1)
    # given back and nowhere to go: lost (it was accepted), not rejected
    up.run(frame())
    [(link, task)] = up.open_tasks()
    link.ack(task)
    for each in up.links():
        each.refuse_next = 5
    link.give_back(task)
    assert up.outcomes[-1][1].code == grpc.StatusCode.UNAVAILABLE
    assert s["lost"] == 1 and s["accepted"] == 2
    _books_exact(up)


def test_an_infer_task_given_back_is_rerun_without_its_caller():
    up = Upstream(2)
    up.run(frame(), want_result=False)
    [(link, task)] = up.open_tasks()
    link.ack(task)
    link.give_back(task)
    [(other, again)] = up.open_tasks()
    other.echo(again)
    s = up.router.stats
    assert (s["accepted"], s["completed"], s["retried"]) == (1, 1, 1)
    _books_exact(up)


def test_lost_failed_and_timed_out_tasks_answer_their_callers():
    up = Upstream(1, eject_after=0)
    for _ in range(3):
        up.run(frame())
    a, b, c = [task for _, task in up.open_tasks()]
    link = up.link("i0")
    link.ack(a)
    link.lose(a)
    link.finish(b, exc=TaskFailed("KeyError: 'x'", grpc.StatusCode.INTERNAL))
    link.finish(c, exc=TaskTimedOut("ran 2.0 s"))
    codes = [r.code for _, r in up.outcomes]
    assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                     grpc.StatusCode.DEADLINE_EXCEEDED]  # fmt: skip
    s = up.router.stats
    assert (s["lost"], s["failed"], s["timed_out"]) == (1, 2, 1)
    _books_exact(up)


def test_cancelled_before_acknowledgement_is_withdrawn_after_it_cancelled():
    """Issue #23 item 3: a task cancelled before any instance acknowledged it was counted
    cancelled and never accepted, so accepted - ends went negative."""
    up = Upstream(1)
    early = up.run(frame())
    late = up.run(frame())
    link = up.link("i0")
    _, late_task = [(lk, t) for lk, t in up.open_tasks()][1]
    link.ack(late_task)
    early.cancel()
    late.cancel()
    assert len(link.cancelled) == 2 and link.inflight == 0
    s = up.router.stats
    assert (s["withdrawn"], s["cancelled"], s["accepted"]) == (1, 1, 1)
    assert up.outcomes == []  # nothing is answered after a cancel
    early.cancel()  # twice: counted once
    assert s["withdrawn"] == 1
    _books_exact(up)


def test_the_deadline_travels_as_remaining_time():
    up = Upstream(1)
    up.run(frame(), timeout=5.0)
    up.run(frame(), want_result=False, timeout=5.0)  # infer: answered at acceptance
    up.run(frame())
    budgets = up.link("i0").timeouts
    assert 4.9 < budgets[0] <= 5.0 and budgets[1] == 0.0 and budgets[2] == 0.0


def test_limits_max_inflight_instance_inflight_and_large_outputs():
    up = Upstream(2, max_inflight=3, instance_inflight=1, max_message=64 * 1024)
    up.run(frame())
    up.run(frame())  # i1: i0 is full, the least loaded takes it
    assert [link.inflight for link in up.links()] == [1, 1]
    up.run(frame())  # every instance full
    assert up.outcomes[-1][1].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "every instance has 1 tasks in flight" in up.outcomes[-1][1].message
    link, task = up.open_tasks()[0]
    link.finish(task, b"x" * (up.router.max_output + 1))  # over the executor's limit
    assert "over the" in up.outcomes[-1][1].message
    up.run(frame(data="y" * 70_000))  # over max_message: refused by the link, not retried
    assert up.outcomes[-1][1].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    up2 = Upstream(1, max_inflight=2)
    for _ in range(3):
        up2.run(frame())
    assert up2.outcomes[-1][1].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "executor has 2 tasks in flight" in up2.outcomes[-1][1].message
    for lk, t in up.open_tasks() + up2.open_tasks():
        lk.echo(t)
    _books_exact(up)
    _books_exact(up2)


def test_draining_and_bad_packets_are_refused_before_placement():
    up = Upstream(1)
    up.router.run_task(b"\xff\xff", True, None, lambda r, a, e: up.outcomes.append((a, e)))
    assert up.outcomes[-1][1].code == grpc.StatusCode.INVALID_ARGUMENT
    up.router.draining = True
    up.run(frame())
    assert up.outcomes[-1][1].code == grpc.StatusCode.UNAVAILABLE
    assert "stopping" in up.outcomes[-1][1].message
    s = up.router.stats
    assert (s["invalid"], s["rejected"], s["received"]) == (1, 1, 2)
    _books_exact(up)


def test_no_instance_available_and_a_link_going_down():
    up = Upstream(2)
    up.run(frame())
    up.run(frame())
    for link, task in up.open_tasks():
        if link.instance_id == "i0":
            link.ack(task)
    up.link("i0").go_down()  # its acked task lost; i1's unacked one stays
    assert up.outcomes[-1][1].code == grpc.StatusCode.UNAVAILABLE
    assert up.hosts.available() == ["i1"]
    up.link("i1").go_down()  # unacked: refused, retried, nowhere to go
    assert up.outcomes[-1][1].message == "no instance available"
    up.run(frame())
    assert up.outcomes[-1][1].message == "no instance available"
    _books_exact(up)


def test_outliers_are_ejected_and_come_back():
    async def main():
        up = Upstream(4, eject_after=2, eject_seconds=0.05, eject_max_percent=50)
        link = up.link("i0")
        for _ in range(2):
            up.run(frame(session="s"))
            while not link.tasks():  # round robin: until i0 has one
                up.run(frame())
            task = link.tasks()[0]
            link.ack(task)
            link.lose(task)
        record = up.hosts.get("i0")
        assert record.ejected and record.ejections == 1
        assert "i0" not in up.hosts.available()
        assert up.hosts.describe("i0")["ejected"] is True
        # at most half: i1 and i2 may go too? only one more (2 of 4)
        for iid in ("i1", "i2"):
            for _ in range(2):
                up.outliers.failed(up.hosts.get(iid))
        assert [up.hosts.get(i).ejected for i in ("i1", "i2")] == [True, False]
        await asyncio.sleep(0.12)
        assert not record.ejected and "i0" in up.hosts.available()
        up.outliers.succeeded(record)
        assert record.failures == 0
        for lk, t in up.open_tasks():
            lk.echo(t)
        _books_exact(up)

    asyncio.run(main())


def test_the_last_instance_is_never_ejected():
    async def main():
        up = Upstream(1, eject_after=1)
        up.outliers.failed(up.hosts.get("i0"))
        assert not up.hosts.get("i0").ejected

    asyncio.run(main())


def test_switching_policy_keeps_membership_flags_and_outstanding_counts():
    from aios_fast import lb

    up = Upstream(3)
    up.hosts.set_draining("i1", True)
    up.hosts.set_weight("i2", 3.0)
    up.run(frame())
    new = lb.make_balancer({"policyRuleURI": "builtin:least_outstanding"}, ())
    up.hosts.replace_balancer(new)
    assert up.hosts.balancer is new and new.state("i0")["outstanding"] == 1
    assert up.hosts.available() == ["i0", "i2"] and up.hosts.get("i2").weight == 3.0
    up.run(frame())  # least outstanding: i2
    assert up.link("i2").inflight == 1
    for link, task in up.open_tasks():
        link.echo(task)
    assert all(new.state(i)["outstanding"] == 0 for i in ("i0", "i1", "i2"))
    _books_exact(up)


@pytest.mark.parametrize("seed", range(5))
def test_the_books_balance_under_random_outcomes_and_cancellations(seed):
    """Hostile interleavings: every way a task can end, in random order, with callers
    cancelling at random moments; both identities hold exactly at the end."""
    rnd = random.Random(seed)
    up = Upstream(3, max_inflight=50, instance_inflight=20, eject_after=0)
    runs = []
    for step in range(3000):
        r = rnd.random()
        if r < 0.3:
            runs.append(up.run(frame(seq=step), want_result=rnd.random() < 0.7,
                               timeout=rnd.choice([None, 1.0])))  # fmt: skip
        elif r < 0.4 and runs:
            live = [run for run in runs[-40:] if not run.over] or runs
            rnd.choice(live).cancel()
        elif r < 0.45:
            link = rnd.choice(up.links())
            if link.up:
                link.go_down()
            else:
                link.start()
        else:
            tasks = up.open_tasks()
            if not tasks:
                continue
            link, task = rnd.choice(tasks)
            action = rnd.choice(["ack", "echo", "echo", "lose", "give_back", "refuse", "fail"])
            if action == "ack":
                link.ack(task)
            elif action == "echo":
                link.echo(task)
            elif action == "lose" and task.acked:
                link.lose(task)
            elif action == "give_back" and task.acked:
                link.give_back(task)
            elif action == "refuse" and not task.acked:
                link.refuse(task)
            elif action == "fail":
                link.finish(task, exc=TaskFailed("boom"))
    for link in up.links():
        link.start()
    while tasks := up.open_tasks():  # the rest finish
        link, task = tasks[0]
        link.echo(task)
    _books_exact(up)
    s = up.router.stats
    assert s["withdrawn"] > 0 and s["cancelled"] > 0 and s["lost"] > 0 and s["retried"] > 0


class _Instances:
    """The executor's side of a reconcile, in memory."""

    def __init__(self):
        self.specs: dict[str, InstanceSpec] = {}
        self.draining: set[str] = set()
        self.busy: dict[str, int] = {}
        self.log: list[str] = []

    def has(self, iid):
        return iid in self.specs

    def inflight_of(self, iid):
        return self.busy.get(iid, 0)

    def add_instance(self, spec):
        if spec.id in self.specs:
            raise ValueError(f"instance {spec.id!r} is already known")
        self.specs[spec.id] = spec
        self.log.append(f"add {spec.id} {spec.target}")

    async def remove_instance(self, iid, drain_timeout=0.0):
        del self.specs[iid]
        self.draining.discard(iid)
        self.log.append(f"remove {iid}")
        return 0

    def set_draining(self, iid, draining):
        (self.draining.add if draining else self.draining.discard)(iid)


def test_one_reconcile_adds_moves_drains_and_removes():
    import logging

    async def main():
        ins = _Instances()
        rec = Reconciler(ins, logging.getLogger("test"), "its Service", drain_grace=0.05)
        a, b = InstanceSpec("a", "h:1"), InstanceSpec("b", "h:2")
        await rec.apply({"a": a, "b": b})
        await rec.apply({"a": a, "b": b})  # repeated: nothing new
        assert ins.log == ["add a h:1", "add b h:2"]
        await rec.apply({"a": InstanceSpec("a", "h:9"), "b": b})  # moved
        assert ins.log[-2:] == ["remove a", "add a h:9"]
        ins.busy["b"] = 1
        await rec.apply({"a": InstanceSpec("a", "h:9")})  # b leaves: drained, kept
        assert "b" in ins.draining and ins.has("b")
        await rec.apply({"a": InstanceSpec("a", "h:9"), "b": b})  # b is back
        assert "b" not in ins.draining and ins.has("b")
        await rec.apply({"a": InstanceSpec("a", "h:9")})
        await asyncio.sleep(0.06)
        await rec.sweep()  # the grace ran out with its task still there
        assert not ins.has("b") and rec.removed == 1
        ins.add_instance(InstanceSpec("c", "h:3"))  # the management API's
        await rec.apply({"a": InstanceSpec("a", "h:9"), "c": InstanceSpec("c", "h:3")})
        assert ins.log.count("add c h:3") == 1  # left alone, logged

    asyncio.run(main())
