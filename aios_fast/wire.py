"""The contracts between a block's processes and its callers, in one place.

Client <-> executor (and instance), the seeds' ``InferenceProxy`` service on raw bytes:
method paths and the serialized ``InferenceResponse(message=true)`` that ``infer``
answers once a task is taken.

On ``infer_stream`` a task that fails does not end the stream: its answer is an error
packet (``error_packet``): the task's session_id and seq_no (when it could be read) and
``data`` = ``{"aios_error": {"code": "<grpc status name>", "message": "..."}}``.

Message sizes: a caller's message may be up to ``MAX_MESSAGE`` bytes (the executor's
``--max-message``; gRPC's usual 4 MiB by default). Everything the executor accepts fits
through a link: link messages may be ``link_limit(max_message)`` bytes, and a batch
holds at most ``LINK_BATCH_BYTES`` unless one item alone is larger (it then travels
alone). An output too large to return (over ``max_output(max_message)``) fails that
task alone (RESOURCE_EXHAUSTED).

Executor <-> instance link: one long-lived bidirectional gRPC stream per instance
(``LINK_METHOD``). Each stream message is a msgpack batch (msgspec), so one gRPC message
carries as many tasks or replies as were ready when the writer last woke up::

    executor -> instance:  [[task_id, kind, payload, timeout], ...]
        kind TASK:    payload = the caller's InferenceMessage; timeout = seconds the
                      caller still waits (0: no deadline); the instance skips it once
                      that has passed
        kind FIRE:    as TASK, but nobody waits for the output (``infer``): the result
                      reply carries b"" (output_ptr routing still happens there)
        kind CANCEL:  the caller gave up on task_id (payload b"", timeout 0)
        kind OIP:     as TASK, but payload = an Open Inference Protocol
                      ModelInferRequest as its caller sent it (``aios_fast.oip``); the
                      RESULT payload is a ModelInferResponse
        kind OIP_REST: the same in the protocol's REST form: payload = the JSON
                      header's length (4 bytes, little-endian) then the HTTP body as it
                      came (Triton's binary tensor extension); RESULT the same framing
    instance -> executor:  [[task_id, kind, payload], ...]
        kind ACK:       the instance took the task (payload b"")
        kind RESULT:    done; payload = output AIOSPacket bytes (b"" when routed elsewhere)
        kind ERROR:     the block failed; payload = the error message (UTF-8): INTERNAL
        kind EXPIRED:   its deadline passed before it ran: DEADLINE_EXCEEDED
        kind TOO_LARGE: its output is over the message limit: RESOURCE_EXHAUSTED
        kind TIMED_OUT: the block ran it over the task timeout (``TIMEOUT_HEADER``,
                        counted from the start of the run): DEADLINE_EXCEEDED
        kind INVALID:   the task's input is bad (an OIP request's tensors do not match
                        the block's declaration): INVALID_ARGUMENT, the caller's fault
        kind REFUSED:   not run (the instance is leaving; before or after its ACK):
                        run it elsewhere
        kind LEAVING:   (task_id 0) the instance drains: send it nothing more; it
                        finishes what it took, then ends the stream

Both directions send raw bytes through grpc (no protobuf objects). Each side says its
message limit in the stream's metadata (``LIMIT_HEADER``; the executor's also bounds
the outputs the instance sends back), so a task or output one side could not take is
refused alone instead of breaking the stream.

Native link (``aios_fast.service.framed``; the executor's ``executor.link`` setting:
``auto``/``native`` use it where the instance offers it, ``grpc`` keeps the stream
above): the same batches, carried in frames of our own over a Unix socket (an instance
on the same host) or TCP (with TLS when the block has it). A frame is a 5-byte header,
the body's length (uint32 little-endian) and its kind, then the body::

    HELLO    executor -> instance, first: msgpack {"v": 1, "max_message": int,
             "run_timeout": float, "token": "Bearer ..." or ""}
    WELCOME  instance -> executor: msgpack {"max_message": int, "nonce": str}
    REFUSE   instance -> executor: why (UTF-8), then it closes (bad token, leaving)
    BATCH    a msgpack batch of tasks or replies, as on the stream
    PING / PONG  empty: the executor pings a link that said nothing for its
             keepalive; an instance answers from its event loop, so a wedged loop or
             a stopped process (SIGSTOP) goes unanswered and the link is cut

The executor learns where an instance's native link listens from the unary call
``ENDPOINTS_METHOD`` on its gRPC port (token checked as the link's): msgpack
``{"unix": path or "", "tcp": port or 0, "nonce": str}``. It uses the Unix socket when
the path exists on its host and the WELCOME's nonce proves it is that instance, else
TCP; an instance that does not implement the call keeps the gRPC stream. A frame over
the receiver's limit (64 KiB before WELCOME, ``link_limit(max_message)`` after) ends
the connection.

vDAG hop -> executor, framed (``executor.hop_front``; an instance passing a vDAG task's
output on, or a vDAG controller starting one): the same frames over the executor's own
Unix socket or TCP port, learnt from its ``HOP_ENDPOINTS_METHOD`` (as above; an
executor without it keeps the hop on ``infer_stream``). HELLO carries
``{"v": 1, "token": ...}``; a BATCH from the sender is msgpack ``[[id, timeout, message],
...]`` (an ``InferenceMessage`` run as an ``infer`` task, ``timeout`` seconds or 0),
one from the executor ``[[id, message], ...]``, once per id: ``ACCEPTED`` once an
instance took it, or the executor's error packet.

Client <-> executor, the Open Inference Protocol (KServe v2 / Triton) on the same port:
``OIP_SERVICE``'s methods (``OIP_METHODS``); ModelInfer and ModelStreamInfer go to the
instances as OIP tasks, the rest the executor answers (``aios_fast.oip``).

Instance registration (Redis): the key ``instance_key(block, instance)`` holds
``{"target": "host:port", "mgmt": "host:port"}`` with a TTL.
"""

from __future__ import annotations

import msgspec

from . import codec

__all__ = [
    "ACCEPTED",
    "ACK",
    "BATCH",
    "CANCEL",
    "ENDPOINTS_METHOD",
    "ENDPOINTS_RPC",
    "ERROR",
    "EXPIRED",
    "FIRE",
    "HELLO",
    "HOP_ENDPOINTS_METHOD",
    "INFER",
    "INFER_RESULT",
    "INFER_STREAM",
    "INVALID",
    "ITEM_OVERHEAD",
    "LEAVING",
    "LIMIT_HEADER",
    "LINK_BATCH_BYTES",
    "LINK_METHOD",
    "LINK_RPC",
    "LINK_SERVICE",
    "MAX_MESSAGE",
    "OIP",
    "OIP_INFER",
    "OIP_METHODS",
    "OIP_REST",
    "OIP_SERVICE",
    "OIP_STREAM",
    "PING",
    "PONG",
    "RAISE_LIMIT",
    "REFUSE",
    "REFUSED",
    "RESULT",
    "SERVICE",
    "TASK",
    "TIMED_OUT",
    "TIMEOUT_HEADER",
    "TOO_LARGE",
    "WELCOME",
    "HopHello",
    "decode_hop_answers",
    "decode_hop_hello",
    "decode_hops",
    "decode_replies",
    "decode_tasks",
    "encode_replies",
    "encode_tasks",
    "error_packet",
    "instance_key",
    "link_limit",
    "max_output",
    "read_error",
]

# --------------------------------------------------------------------- InferenceProxy

SERVICE = "InferenceProxy"
INFER = f"/{SERVICE}/infer"
INFER_RESULT = f"/{SERVICE}/infer_result"
INFER_STREAM = f"/{SERVICE}/infer_stream"
ACCEPTED = b"\x08\x01"  # InferenceResponse(message=True), serialized
MAX_MESSAGE = 4 * 1024 * 1024  # gRPC's default receive limit
# What a message over the limit tells its caller to raise: said by clients and servers.
RAISE_LIMIT = "raise the block's initSettings.maxMessageBytes"
_WRAP = 16  # InferenceMessage around a packet: tag + length varint (<= 6 bytes), with room


def max_output(max_message: int) -> int:
    """The largest output packet a caller limited to ``max_message`` can receive."""
    return max_message - _WRAP


def error_packet(code: str, message: str, packet=None) -> bytes:
    """A failed task's answer on ``infer_stream`` (AIOSPacket bytes)."""
    error = msgspec.json.encode({"aios_error": {"code": code, "message": message}}).decode()
    if packet is None:
        return codec.encode_packet(codec.Packet(data=error))
    return codec.encode_packet(
        codec.Packet(session_id=packet.session_id, seq_no=packet.seq_no, data=error)
    )


def read_error(packet) -> tuple[str, str] | None:
    """(code, message) when ``packet`` (a decoded output) is an error packet."""
    data = packet.data
    if not data.startswith('{"aios_error"'):
        return None
    try:
        error = msgspec.json.decode(data)["aios_error"]
        return str(error["code"]), str(error["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------- Open Inference Protocol

OIP_SERVICE = "inference.GRPCInferenceService"
OIP_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
               "ModelInfer", "ModelStreamInfer", "ModelConfig")  # fmt: skip
OIP_INFER = f"/{OIP_SERVICE}/ModelInfer"
OIP_STREAM = f"/{OIP_SERVICE}/ModelStreamInfer"


# --------------------------------------------------------------------- instance link

LINK_SERVICE = "aios.InstanceLink"
LINK_RPC = "Tasks"
LINK_METHOD = f"/{LINK_SERVICE}/{LINK_RPC}"
TASK, CANCEL, FIRE, OIP, OIP_REST = 0, 1, 2, 3, 4
LIMIT_HEADER = "x-aios-max-message"  # link metadata: the sender's --max-message
TIMEOUT_HEADER = "x-aios-task-timeout"  # link metadata: the executor's --task-timeout
ACK, RESULT, ERROR, EXPIRED, TOO_LARGE, REFUSED, LEAVING, TIMED_OUT = 0, 1, 2, 3, 4, 5, 6, 7
ENDPOINTS_RPC = "Endpoints"
ENDPOINTS_METHOD = f"/{LINK_SERVICE}/{ENDPOINTS_RPC}"
# an executor's framed front for vDAG hops (``executor.hop_front``): where it listens
HOP_ENDPOINTS_METHOD = "/aios.Hop/Endpoints"
HELLO, WELCOME, REFUSE, BATCH, PING, PONG = 1, 2, 3, 4, 5, 6  # native link frame kinds
INVALID = 8
LINK_BATCH_BYTES = 1024 * 1024  # a batch fills up to this, unless one item is larger
ITEM_OVERHEAD = 32  # msgpack bytes around one item's payload, at most (ids, kinds, floats)
_LINK_SLACK = 64 * 1024


def link_limit(max_message: int) -> int:
    """The link's gRPC message limit for tasks of up to ``max_message`` bytes: a lone
    item of that size plus its framing always fits."""
    return max(max_message, LINK_BATCH_BYTES) + _LINK_SLACK


_encoder = msgspec.msgpack.Encoder()
_tasks_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, bytes, float]])
_replies_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, bytes]])
_hops_decoder = msgspec.msgpack.Decoder(list[tuple[int, float, bytes]])
_hop_answers_decoder = msgspec.msgpack.Decoder(list[tuple[int, bytes]])


class HopHello(msgspec.Struct):
    """A hop sender's (or an answering instance's) HELLO."""

    v: int = 1
    token: str = ""


_hop_hello_decoder = msgspec.msgpack.Decoder(HopHello)


def decode_hop_hello(body) -> HopHello:
    return _hop_hello_decoder.decode(body)


def decode_hops(body) -> list[tuple[int, float, bytes]]:
    """A hop sender's BATCH: (id, timeout seconds or 0, InferenceMessage) each."""
    return _hops_decoder.decode(body)


def decode_hop_answers(body) -> list[tuple[int, bytes]]:
    """An executor's BATCH to a hop sender: (id, answer InferenceMessage) each."""
    return _hop_answers_decoder.decode(body)


def encode_tasks(batch: list) -> bytes:
    return _encoder.encode(batch)


def decode_tasks(data: bytes) -> list[tuple[int, int, bytes, float]]:
    return _tasks_decoder.decode(data)


def encode_replies(batch: list) -> bytes:
    return _encoder.encode(batch)


def decode_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    return _replies_decoder.decode(data)


# --------------------------------------------------------------------- registration


def instance_key(block_id: str, instance_id: str = "*") -> str:
    """The Redis key an instance registers under (``*``: the pattern for a block)."""
    return f"aios:block:{block_id}:instance:{instance_id}"
