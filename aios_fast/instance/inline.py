"""Whether a sync Block hook runs on the event loop (inline) or in a thread.

A thread hop costs a task two loop wake-ups and a thread switch, more than a cheap
hook itself. A hook whose class says ``inline = True`` always runs on the loop, one
that says ``inline = False`` never does; for the others the runtime measures: a hook
starts in threads, and once ``WARMUP`` calls in a row each took at most ``budget``
seconds (the block's ``initSettings.instance.inlineBudget``; 0: never) it runs inline.
An inline call over the budget sends it back to threads, and it must then show twice
as many cheap calls in a row to come back (at most ``MAX_STREAK``), so a hook that is
sometimes slow blocks the loop at most once per that many calls.
"""

from __future__ import annotations

__all__ = ["MAX_STREAK", "WARMUP", "InlineChooser"]

WARMUP = 32
MAX_STREAK = 4096


class InlineChooser:
    """One hook's choice. ``inline``: run it on the loop now; ``observe(seconds)`` after
    every call (from whichever thread ran it)."""

    __slots__ = ("_good", "_needed", "budget", "declared", "inline", "switches")

    def __init__(self, budget: float, declared: bool | None) -> None:
        self.budget = budget
        self.declared = declared
        self.inline = declared is True
        self.switches = 0  # times it moved between the loop and threads
        self._good = 0  # cheap calls in a row
        self._needed = WARMUP

    def observe(self, seconds: float) -> None:
        if self.declared is not None:
            return
        if seconds <= self.budget:
            self._good += 1
            if not self.inline and self.budget > 0 and self._good >= self._needed:
                self.inline = True
                self.switches += 1
            return
        self._good = 0
        if self.inline:
            self.inline = False
            self.switches += 1
            self._needed = min(self._needed * 2, MAX_STREAK)
