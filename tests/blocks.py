"""Blocks used by the data-plane tests."""

import asyncio

from aios_fast.block import Block


class SleepBlock(Block):
    """Echoes data after ``delay`` seconds (async: the event loop stays free)."""

    async def on_data(self, entry):
        await asyncio.sleep(float(self.parameters.get("delay", 0.2)))
        return entry.data


class FailingBlock(Block):
    inline = True

    def on_data(self, entry):
        raise RuntimeError(f"cannot handle {entry.session_id}")
