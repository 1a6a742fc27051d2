from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class InferenceMessage(_message.Message):
    __slots__ = ("rpc_data",)
    RPC_DATA_FIELD_NUMBER: _ClassVar[int]
    rpc_data: bytes
    def __init__(self, rpc_data: _Optional[bytes] = ...) -> None: ...

class InferenceResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: bool
    def __init__(self, message: _Optional[bool] = ...) -> None: ...
