"""Logging that stays readable under load: a condition repeated thousands of times a
second (tasks failing on one instance, a link reconnecting) is one line, then one line
per interval saying how many more there were."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Per key (what the line is about): the first occurrence is logged at once, later
    ones at most every ``interval`` seconds, with the count of those not logged."""

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = interval
        self._next: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def log(self, level: int, key: str, message: str) -> bool:
        """Log ``key: message`` unless ``key`` was logged less than ``interval`` ago.
        Returns whether a line was written."""
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return False
        more = self._unlogged.pop(key, 0)
        suffix = f" ({more} more like it in the last {self.interval:g}s)" if more else ""
        self.logger.log(level, "%s: %s%s", key, message, suffix)
        self._next[key] = now + self.interval
        return True

    def error(self, key: str, message: str) -> bool:
        return self.log(logging.ERROR, key, message)

    def warning(self, key: str, message: str) -> bool:
        return self.log(logging.WARNING, key, message)
