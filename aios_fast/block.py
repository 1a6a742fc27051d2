"""The user-facing Block API run by the instance runtime (``aios_fast.instance``).

Write a subclass of ``Block`` (sync or async methods both work; sync ones run in a
thread so they cannot stall the event loop, unless the class sets ``inline = True``
for work too cheap to be worth the thread hop):

    class MyBlock(Block):
        def on_preprocess(self, packet):   # Packet view -> the entry on_data gets
            return json.loads(packet.data)
        def on_data(self, entry):          # -> the output (see below)
            return {"answer": entry["x"] * 2}

on_data may return a Packet (sent as is), a str / bytes (the output packet's data), a
dict or list (JSON-encoded into data), or None (no output). The output packet keeps the
input's session_id, seq_no and output_ptr, with ts set to now.

A block may also (or instead) implement ``on_batch(entries) -> outputs``: the runtime
then hands it batches of entries (each through on_preprocess) formed across all the
instance's links and calls, and each task gets the output in its own entry's place, one
output per entry, in order. An exception object in an entry's place fails that task
only; an on_batch that raises fails every task of the batch. Batching settings (mode
adaptive | delay | off, maxBatchSize, maxQueueDelayMs, preferredBatchSizes,
maxConcurrentBatches) come from the block document's ``initSettings.batching`` or the
block's ``parameters.batching`` (``aios_fast.instance.batcher``). With only on_data,
tasks run one at a time as before.

``aios-fast block up --traffic N`` sends N tasks through the running block. A block may
say what they carry: the classmethod ``traffic_samples(parameters)`` returns a list of
``(data, expected)`` pairs (data: the task's data string; expected: None, or a dict of
fields the JSON output must carry with those values), sent in turn, and the class
attribute ``traffic_min_agreement`` (default 1.0) is the share of checked answers that
must match. Without it the tasks carry the load generator's own JSON.

Tensors (the Open Inference Protocol, KServe v2 / Triton; ``aios_fast.tensors``): a
ModelInfer request to the block reaches ``on_data`` (or ``on_batch``) as an
``InferRequest`` (``aios_fast.oip``), not through on_preprocess: ``entry.inputs`` maps
each input's name to a NumPy array viewing the request's bytes (no copy, read-only).
Return ``{output name: array}`` (or a list in the declared order, or a lone array for
one output). The block document declares the tensors (``inputProtocol`` /
``outputProtocol``: ``{"tensors": [{"name": "x", "datatype": "FP32", "shape": [-1,
64]}]}``); requests that do not match get INVALID_ARGUMENT before the block sees them,
and ModelMetadata answers from it. A block serving both kinds tells them apart with
``isinstance(entry, InferRequest)``. With ``stack_tensors = True`` a block's on_batch
gets the batch's OIP requests stacked along the first dimension, as Triton's dynamic
batcher does (requests with the same inputs, dtypes and trailing dimensions become one
InferRequest of all their rows; its output is cut back into each request's rows);
without it each request is its own entry (``tensors.stack`` / ``tensors.split`` do the
same by hand).

Large inputs come by reference: ``await self.frames.get(packet.frame_ptr)`` resolves a
frame_ptr through the instance's Frame DB (``aios_fast.framedb``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .framedb import FrameDB
from .oip import InferRequest

__all__ = ["Block", "EchoBlock", "HashBlock"]


class Block:
    """Base class: every hook has a working default."""

    frames: FrameDB  # set by the instance runtime before the first task
    # ``block up --traffic``: the share of answers that must match their expected fields
    # (a model's accuracy: below 1.0; a deterministic block: 1.0, every one)
    traffic_min_agreement: float = 1.0
    # on_batch gets the batch's OIP requests stacked along the first dimension (see above)
    stack_tensors: bool = False

    def __init__(self, init_data: dict | None = None, parameters: dict | None = None) -> None:
        self.init_data = dict(init_data or {})
        self.parameters = dict(parameters or {})
        self.frames = FrameDB({})

    def on_preprocess(self, packet) -> Any:
        return packet

    def on_data(self, entry) -> Any:
        raise NotImplementedError("a Block must implement on_data() or on_batch()")

    def on_batch(self, entries: list) -> list:
        """Optional: the outputs for a batch of entries, one per entry in order (each
        as on_data would return it, or an exception object to fail that task alone).
        Sync (run in a thread unless ``inline``) or async. Blocks without it get no
        batches."""
        raise NotImplementedError("this block does not implement on_batch()")

    @classmethod
    def traffic_samples(cls, parameters: dict) -> list[tuple[str, dict | None]] | None:
        """Optional: sample tasks for ``aios-fast block up --traffic`` (run in the
        ``block up`` process, given the document's ``parameters``, before the block
        starts): a non-empty list of ``(data, expected)`` pairs, data the task's data
        string, expected None (the status alone is checked) or a dict of fields the
        answer's JSON object must carry with these values. Tasks cycle through the
        list; ``traffic_min_agreement`` of the answers with an expectation must match.
        None (the default): the load generator's own payload."""
        return None

    def health(self) -> bool | dict:
        """True (or a dict, reported as JSON) when healthy; False or raising is unhealthy."""
        return True

    def on_update(self, parameters: dict) -> None:
        self.parameters.update(parameters)

    def management(self, action: str, data: dict) -> Any:
        raise ValueError(f"unknown management action {action!r}")


class EchoBlock(Block):
    """Returns the input packet's data unchanged (the transport's speed limit); an OIP
    request's input tensors come back as its outputs, same names."""

    inline = True  # trivially cheap: run on the event loop, no thread hop

    def on_data(self, entry) -> Any:
        if isinstance(entry, InferRequest):
            return entry.inputs
        return entry.data


class HashBlock(Block):
    """A real CPU computation: SHA-256 rounds over the data and files (``rounds`` param)."""

    def on_data(self, entry) -> Any:
        digest = entry.data.encode()
        for f in entry.files:
            digest += bytes(f.file_data)
        for _ in range(int(self.parameters.get("rounds", 100))):
            digest = hashlib.sha256(digest).digest()
        return json.dumps({"sha256": digest.hex(), "rounds": self.parameters.get("rounds", 100)})
