"""Blocks for the vDAG tests."""

import json
import time

from aios_fast.block import Block


class StepBlock(Block):
    """Appends parameters['name'] to data['path'] and adds parameters['add'] to data['x'].
    A fan-in node's joined data ({input name: output}) becomes {"path": [their paths by
    name], "joined": [names], "x": their sum}. parameters['fail_over']: raise when x is
    over it; parameters['sleep']: seconds to sleep first (a slow node)."""

    def on_data(self, entry):
        time.sleep(float(self.parameters.get("sleep", 0)))
        data = json.loads(entry.data or "{}")
        if "path" not in data and data and all(isinstance(v, dict) for v in data.values()):
            names = sorted(data)
            data = {"path": [data[k]["path"] for k in names], "joined": names,
                    "x": sum(data[k]["x"] for k in names)}  # fmt: skip
        data.setdefault("path", []).append(self.parameters["name"])
        data["x"] = data.get("x", 0) + self.parameters.get("add", 0)
        if "fail_over" in self.parameters and data["x"] > self.parameters["fail_over"]:
            raise ValueError(f"x={data['x']} is too large")
        return data


class SleepyBlock(Block):
    """An async block: waits parameters['sleep'] seconds, then writes the file
    parameters['done'] and passes its input on (a run that is stopped never writes it)."""

    async def on_data(self, entry):
        import asyncio
        from pathlib import Path

        await asyncio.sleep(float(self.parameters["sleep"]))
        Path(self.parameters["done"]).write_text("done")
        return entry.data
