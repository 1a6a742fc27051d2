"""Blocks used by the data-plane tests."""

import asyncio

from aios_fast.block import Block
from aios_fast.oip import InferRequest


class SleepBlock(Block):
    """Echoes data (an OIP request: its inputs) after ``delay`` seconds (async: the event
    loop stays free)."""

    async def on_data(self, entry):
        await asyncio.sleep(float(self.parameters.get("delay", 0.2)))
        return entry.inputs if isinstance(entry, InferRequest) else entry.data


class FailingBlock(Block):
    inline = True

    def on_data(self, entry):
        raise RuntimeError(f"cannot handle {entry.session_id}")


class FrameDigestBlock(Block):
    """Resolves the packet's frame_ptr and returns its size and SHA-256."""

    async def on_data(self, entry):
        import hashlib

        frame = await self.frames.get(entry.frame_ptr)
        return {"size": len(frame), "sha256": hashlib.sha256(frame).hexdigest()}


class RedisSinkBlock(Block):
    """LPUSHes each task's data to parameters['queue'] at parameters['url'] (a test probe)."""

    async def on_data(self, entry):
        import redis.asyncio as redis

        client = redis.Redis.from_url(self.parameters["url"])
        try:
            await client.lpush(self.parameters["queue"], entry.data)
        finally:
            await client.aclose()
        return entry.data


class NameBlock(Block):
    """Answers with parameters['name']: shows which instance served a task. Healthy
    while parameters['healthy'] (default true; update_parameters changes it)."""

    inline = True

    def on_data(self, entry):
        return self.parameters["name"]

    def health(self):
        return self.parameters.get("healthy", True)


class ControlBlock(Block):
    """Does what each task's data (JSON) says: ``{"sleep": s}`` waits s seconds first,
    ``{"out_bytes": n}`` answers with an output packet of exactly n bytes, ``{"fail":
    true}`` raises; otherwise it echoes the data. Fault tests steer it task by task."""

    async def on_data(self, entry):
        import json
        import time

        from aios_fast import codec

        try:
            order = json.loads(entry.data)
        except ValueError:
            order = {}
        order = order if isinstance(order, dict) else {}
        if order.get("sleep"):
            await asyncio.sleep(float(order["sleep"]))
        if order.get("fail"):
            raise RuntimeError("asked to fail")
        if "out_bytes" not in order:
            return entry.data
        want = int(order["out_bytes"])
        out = codec.Packet(session_id=entry.session_id, seq_no=entry.seq_no, ts=time.time())
        n = want
        while True:  # the length prefix grows with the data: settle on the exact size
            out.data = "x" * max(n, 0)
            size = len(codec.encode_packet(out))
            if size == want or n < 0:
                return out
            n += want - size


class HangBlock(Block):
    """Never answers (a wedged model); SIGTERM still stops the process."""

    async def on_data(self, entry):
        await asyncio.sleep(3600)


class WedgeBlock(Block):
    """Blocks the instance's event loop (inline and sync) for parameters['seconds']:
    the process still answers HTTP/2 pings (grpc core's threads) but says nothing."""

    inline = True

    def on_data(self, entry):
        import time

        time.sleep(float(self.parameters.get("seconds", 30)))
        return entry.data


class ChattyBlock(Block):
    """Prints to stdout while it loads and while it works, as model libraries do."""

    inline = True

    def __init__(self, init_data=None, parameters=None):
        print("loading the model... 100%")
        print('{"not": "the announcement"}')
        super().__init__(init_data, parameters)

    def on_data(self, entry):
        print("running", entry.seq_no)
        return entry.data


class PacketEchoBlock(Block):
    """Returns the input packet whole (files included)."""

    inline = True

    def on_data(self, entry):
        return entry


class BrokenInitBlock(Block):
    """Its ``__init__`` raises, as a model that cannot find its weights does."""

    def __init__(self, init_data=None, parameters=None):
        super().__init__(init_data, parameters)
        self._load_weights()

    def _load_weights(self):
        raise RuntimeError("weights.bin not found")


class KeyErrorBlock(Block):
    """``on_data`` raises KeyError: 'x' on every task."""

    inline = True

    def on_data(self, entry):
        return {}["x"]


class SlowInitBlock(Block):
    """Loads for ``initData['seconds']`` (a big model), waiting on ``initData['gate']``
    (a file) to appear when given: the test decides when loading ends."""

    def __init__(self, init_data=None, parameters=None):
        import os
        import time

        super().__init__(init_data, parameters)
        gate = self.init_data.get("gate")
        end = time.monotonic() + float(self.init_data.get("seconds", 60))
        while time.monotonic() < end and not (gate and os.path.exists(gate)):
            time.sleep(0.05)
