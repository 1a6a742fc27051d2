from collections.abc import Iterable
from typing import Any

IMPLEMENTATION: str
MAX_DEPTH: int

class FileInfo:
    metadata: str
    file_data: Any  # bytes-like; a memoryview into the decoded buffer when decoded
    def __init__(self, metadata: str = "", file_data: Any = b"") -> None: ...

class Packet:
    session_id: str
    seq_no: int
    frame_ptr: Any  # bytes-like; a memoryview into the decoded buffer when decoded
    data: str
    ts: float
    output_ptr: str
    files: list[FileInfo]
    def __init__(
        self,
        session_id: str = "",
        seq_no: int = 0,
        frame_ptr: Any = b"",
        data: str = "",
        ts: float = 0.0,
        output_ptr: str = "",
        files: Iterable[FileInfo] = (),
    ) -> None: ...
    def get_session_id(self) -> str: ...
    def replace(self, **changes: Any) -> Packet: ...

def decode_packet(buf: Any) -> Packet: ...
def decode_message(buf: Any) -> Packet: ...
def peel_message(buf: Any) -> memoryview: ...
def encode_packet(packet: Packet) -> bytes: ...
def encode_message(payload: Any) -> bytes: ...
