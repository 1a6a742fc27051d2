"""The health-checker sidecar (seeds: "Block health checker", management port 19001).

Every ``interval`` seconds: list the executor's instances (its management API), call
each one's ``GET /health`` (``health`` address given when the instance was added) with
``timeout``; non-200 or no answer in time is unhealthy. An instance without a health
address is judged by its executor link. After ``unhealthy_after`` failed checks in a
row an instance is marked unhealthy in the executor (``set_instance_health``) and gets
no tasks; after ``healthy_after`` good checks in a row it is marked healthy again.
Then the block's ``stabilityChecker`` policy is called with the seeds' input:
``{"health_check_data": {instance_id: bool}, "instances": [instance ids]}``.

Extra management actions: ``health`` (the latest verdict per instance with failure
counts and last error).

Run alone: ``python -m aios_fast.sidecars.healthcheck --executor http://127.0.0.1:18001``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time

import aiohttp

from ..auth import Auth
from ..errors import AiosFastError
from ..service import runtime
from ..tls import TLS, add_tls_arguments
from .base import Sidecar

__all__ = ["HealthChecker"]


class NoPolicy:
    """``builtin:none``: the checks and verdicts only, no policy decisions."""

    def __init__(self, rule_id, settings, parameters):
        pass

    def eval(self, parameters, input_data, context):
        return {}


class HealthChecker(Sidecar):
    name = "health-checker"
    BUILTINS = {"none": NoPolicy}

    def __init__(
        self,
        executor_url: str,
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        unhealthy_after: int = 1,
        healthy_after: int = 1,
        **kw,
    ) -> None:
        super().__init__(executor_url, interval=interval, **kw)
        if timeout <= 0 or unhealthy_after < 1 or healthy_after < 1:
            raise ValueError("health checker: timeout > 0 and thresholds >= 1 expected")
        self.timeout = timeout
        self.unhealthy_after = unhealthy_after
        self.healthy_after = healthy_after
        self.records: dict[str, dict] = {}  # instance id -> streaks, verdict, last error
        self._session: aiohttp.ClientSession | None = None
        self.actions["health"] = lambda data: self.records

    async def _probe(self, row: dict) -> tuple[bool, str | None]:
        if not row.get("health"):
            return bool(row["up"]), None if row["up"] else "executor link is down"
        url = f"{self.tls.scheme}://{row['health']}/health"
        assert self._session is not None, "probed before start()"
        try:
            assert self._session is not None  # made by check_once before probing
            async with self._session.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    return True, None
                return False, f"GET {url}: {resp.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return False, f"GET {url}: {type(exc).__name__} {exc}".strip()

    async def round(self) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.tls.client_context() or True),
            )
        rows = await self.executor.call("list_instances")
        results = await asyncio.gather(*(self._probe(row) for row in rows))
        health_check_data: dict[str, bool] = {}
        changed: dict[str, bool] = {}
        for row, (ok, error) in zip(rows, results, strict=True):
            iid = row["id"]
            rec = self.records.setdefault(
                iid, {"healthy": row["healthy"], "failures": 0, "successes": 0, "error": None}
            )
            rec["checked_at"] = time.time()
            if ok:
                rec["successes"] += 1
                rec["failures"] = 0
                rec["error"] = None
                verdict = rec["healthy"] or rec["successes"] >= self.healthy_after
            else:
                rec["failures"] += 1
                rec["successes"] = 0
                rec["error"] = error
                verdict = rec["healthy"] and rec["failures"] < self.unhealthy_after
            rec["healthy"] = verdict
            health_check_data[iid] = ok
            if verdict != row["healthy"]:
                changed[iid] = verdict
        for iid in set(self.records) - {row["id"] for row in rows}:
            del self.records[iid]  # removed from the executor
        for iid, verdict in changed.items():
            try:
                await self.executor.call("set_instance_health", {"id": iid, "healthy": verdict})
            except Exception as exc:  # removed meanwhile, or the executor is away
                self.log.warning(
                    "could not mark %s %s: %s", iid, "healthy" if verdict else "unhealthy", exc
                )
                continue
            self.log.warning(
                "instance %s is now %s%s",
                iid,
                "healthy" if verdict else "unhealthy",
                "" if verdict else f" ({self.records[iid]['error']})",
            )
        decision = await self.evaluate(
            {"health_check_data": health_check_data, "instances": [row["id"] for row in rows]}
        )
        return {
            "health_check_data": health_check_data,
            "changed": changed,
            "policy_result": decision,
        }

    async def stop(self) -> None:
        await super().stop()
        if self._session is not None:
            await self._session.close()


def main(argv=None) -> int:

    parser = argparse.ArgumentParser(
        description="Run a block's health-checker sidecar.",
        prog="python -m aios_fast.sidecars.healthcheck",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--executor", default="http://127.0.0.1:18001", help="the executor's management URL"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19001, help="management port")
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--unhealthy-after", type=int, default=1)
    parser.add_argument("--healthy-after", type=int, default=1)
    parser.add_argument("--block", help="block document (JSON file): stabilityChecker policy")
    parser.add_argument(
        "--auth-file",
        help="tokens, one 'role token' a line (AIOS_FAST_TOKEN: "
        "one token, every role); the admin one is sent to the executor",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without any token"
    )
    add_tls_arguments(parser)
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return _run(opts)
    except (AiosFastError, OSError, ValueError) as exc:  # bad document, port taken, ...
        print(f"health checker: cannot start: {exc}", file=sys.stderr, flush=True)
        return 2


def _run(opts) -> int:
    block = {}
    if opts.block:
        with open(opts.block, "rb") as f:
            block = json.loads(f.read())
        if not isinstance(block, dict):
            raise ValueError(f"block document {opts.block} is not a JSON object")
    policy = (block.get("policies") or {}).get("stabilityChecker")
    runtime.reserve_stdout()  # a user policy may print: stdout carries the ports alone

    async def run() -> None:
        checker = HealthChecker(
            opts.executor,
            auth=Auth.from_env(opts.auth_file),
            insecure=opts.insecure,
            tls=TLS.from_options(opts),
            interval=opts.interval,
            timeout=opts.timeout,
            unhealthy_after=opts.unhealthy_after,
            healthy_after=opts.healthy_after,
            policy=policy,
            block_data=block,
            cluster_data=block.get("cluster") or {},
        )
        await checker.start(opts.host, opts.port)
        runtime.announce({"mgmt_port": checker.port})
        await runtime.until_signalled()
        await checker.stop()

    runtime.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
