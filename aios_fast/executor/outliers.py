"""Outlier detection (Envoy's): results observed, an ``ejected`` flag set.

An instance that loses or times out ``eject_after`` tasks in a row is ejected: out of
the balancer for ``eject_seconds`` x its ejections (at most ``MAX_EJECTION``), never
more than ``eject_max_percent`` of the instances (at least one may go; never the last).
A quiet spell since its last ejection shortens the next. The detector only observes
results and sets the host set's flag; it owns no instance state of its own beyond the
records' failure counts.
"""

from __future__ import annotations

import asyncio
import logging

from ..logs import RateLimitedLog
from .hostset import HostSet, Instance

__all__ = ["MAX_EJECTION", "OutlierDetector"]

log = logging.getLogger("aios_fast.executor")
MAX_EJECTION = 300.0  # seconds, however often an instance was ejected


class OutlierDetector:
    def __init__(self, hosts: HostSet, eject_after: int, eject_seconds: float,
                 eject_max_percent: int) -> None:  # fmt: skip
        self.hosts = hosts
        self.eject_after = eject_after
        self.eject_seconds = eject_seconds
        self.eject_max_percent = eject_max_percent
        self._log = RateLimitedLog(log, 5.0)

    def succeeded(self, record: Instance | None) -> None:
        if record is not None:
            record.failures = 0

    def failed(self, record: Instance | None) -> None:
        """A task lost or timed out on ``record``'s instance."""
        if record is None:
            return
        record.failures += 1
        limit = self.eject_after
        if limit and record.failures >= limit and not record.ejected:
            self._eject(record)

    def _eject(self, record: Instance) -> None:
        hosts = self.hosts
        n = len(hosts)
        allowed = max(1, n * self.eject_max_percent // 100) if n > 1 else 0  # never the last
        if hosts.ejected_count() + 1 > allowed:
            self._log.warning(f"instance {record.id}", f"{record.failures} failures in a row; "
                              "not ejected: too many instances are ejected already")  # fmt: skip
            return
        loop = asyncio.get_running_loop()
        if record.returned_at:  # a quiet spell since the last one shortens the next
            quiet = int((loop.time() - record.returned_at) // max(self.eject_seconds, 1e-3))
            record.ejections = max(0, record.ejections - quiet)
        record.ejections += 1
        seconds = min(self.eject_seconds * record.ejections, MAX_EJECTION)
        log.warning("instance %s ejected for %.1fs after %d failures in a row (ejection %d)",
                    record.id, seconds, record.failures, record.ejections)  # fmt: skip
        record.failures = 0
        hosts.set_ejected(record, True, loop.time())
        loop.call_later(seconds, self._return, record)

    def _return(self, record: Instance) -> None:
        self.hosts.set_ejected(record, False, asyncio.get_running_loop().time())
        if self.hosts.get(record.id) is record:
            log.info("instance %s is back from ejection", record.id)
