"""Task outcomes: the counts by outcome, and the log of the Block's own errors (the
user's traceback for the first occurrence of each distinct error, then a count of its
repeats at most once per ``interval`` seconds)."""

from __future__ import annotations

import logging
import time
import traceback

from ..errors import OutputTooLarge, TaskExpired, TaskTimedOut
from ..oip import InvalidTensor
from .loading import user_traceback

__all__ = ["NOT_THE_BLOCKS", "ErrorLog", "Outcomes"]

# Ours, not the block's: counted, answered to the caller, never logged as its error.
NOT_THE_BLOCKS = (TaskExpired, TaskTimedOut, OutputTooLarge, InvalidTensor)


class ErrorLog:
    """Logs the Block's exceptions. Two exceptions are the same error when their type,
    message and the line that raised them are the same."""

    def __init__(self, log: logging.Logger, interval: float = 10.0) -> None:
        self._log = log
        self.interval = interval
        self._repeats: dict[tuple, int] = {}  # error -> repeats not yet logged
        self._told_at: dict[tuple, float] = {}

    @staticmethod
    def _key(exc: BaseException) -> tuple:
        frames = traceback.extract_tb(exc.__traceback__)
        where = (frames[-1].filename, frames[-1].lineno) if frames else None
        return (type(exc).__qualname__, str(exc), where)

    def report(self, exc: BaseException) -> None:
        key = self._key(exc)
        now = time.monotonic()
        if key not in self._told_at:
            self._told_at[key] = now
            self._repeats[key] = 0
            self._log.error("the block raised (first of its kind; repeats are counted):\n%s",
                            user_traceback(exc))  # fmt: skip
            return
        self._repeats[key] += 1
        if now - self._told_at[key] >= self.interval:
            self._flush(key, now)

    def _flush(self, key: tuple, now: float) -> None:
        count = self._repeats[key]
        if count:
            self._log.error("the block raised %s: %s %d more time(s) since it was last logged",
                            key[0], key[1], count)  # fmt: skip
        self._repeats[key] = 0
        self._told_at[key] = now

    def flush(self) -> None:
        """Log the repeats not yet told (at stop)."""
        now = time.monotonic()
        for key in list(self._repeats):
            self._flush(key, now)


class Outcomes:
    """Counts of the tasks' outcomes (completed, failed, cancelled, timed out) and the
    log of the block's errors."""

    def __init__(self, log: logging.Logger) -> None:
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.timed_out = 0
        self.errors = ErrorLog(log)

    def fail(self, exc: BaseException) -> None:
        """A task failed with ``exc``: counted, and logged when it is the block's."""
        self.failed += 1
        if not isinstance(exc, NOT_THE_BLOCKS):
            self.errors.report(exc)
