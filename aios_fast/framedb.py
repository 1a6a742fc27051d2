"""Frame DB: large inputs travel by reference (``frame_ptr``), never through the executor.

A frame_ptr is JSON ``{"framedb_id": ..., "key": ...}``. ``FrameDB`` resolves it with
the store configured for that framedb_id:

- ``"memory"`` (the embedded default): an in-process dict, for a block and its clients
  in one process (tests, notebooks);
- ``redis://host:port/db``: a Redis server (redis.asyncio with hiredis), for everything
  that crosses processes or machines.

Configure with a mapping {framedb_id: url} or the ``AIOS_FRAMEDB`` environment variable
(the same mapping as JSON). Unknown ids, malformed pointers and missing keys raise
FrameError with the reason.
"""

from __future__ import annotations

import json
import os
import uuid

import msgspec

from .errors import AiosFastError

__all__ = ["FrameDB", "FrameError", "FramePtr", "make_frame_ptr"]

DEFAULT_ID = "local"


class FrameError(AiosFastError):
    """A frame_ptr that cannot be resolved."""


class FramePtr(msgspec.Struct, frozen=True):
    framedb_id: str
    key: str


_decode_ptr = msgspec.json.Decoder(FramePtr).decode


def make_frame_ptr(framedb_id: str, key: str) -> bytes:
    return msgspec.json.encode(FramePtr(framedb_id, key))


class _Memory:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.data[key] = bytes(value)

    async def close(self) -> None:
        pass


class _Redis:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url)

    async def get(self, key: str) -> bytes | None:
        return await self.client.get(key)  # type: ignore[return-value]  # no decode_responses

    async def set(self, key: str, value, ttl: float | None) -> None:
        await self.client.set(key, bytes(value), px=int(ttl * 1000) if ttl else None)

    async def close(self) -> None:
        await self.client.aclose()


class FrameDB:
    """Resolves frame_ptrs and stores frames, by framedb_id."""

    def __init__(self, stores: dict[str, str] | None = None) -> None:
        if stores is None:
            stores = json.loads(os.environ.get("AIOS_FRAMEDB", "{}") or "{}")
        self._urls = {DEFAULT_ID: "memory", **stores}
        self._stores: dict[str, _Memory | _Redis] = {}

    def _store(self, framedb_id: str) -> _Memory | _Redis:
        store = self._stores.get(framedb_id)
        if store is None:
            url = self._urls.get(framedb_id)
            if url is None:
                raise FrameError(
                    f"unknown framedb_id {framedb_id!r}; configured: {sorted(self._urls)}"
                )
            if url == "memory":
                store = _Memory()
            elif url.startswith(("redis://", "rediss://", "unix://")):
                store = _Redis(url)
            else:
                raise FrameError(f"framedb {framedb_id!r}: unsupported store URL {url!r}")
            self._stores[framedb_id] = store
        return store

    async def put(self, data, framedb_id: str = DEFAULT_ID, *, key: str | None = None,
                  ttl: float | None = None) -> bytes:  # fmt: skip
        """Store a frame; returns the frame_ptr (bytes, ready for AIOSPacket.frame_ptr)."""
        key = key or uuid.uuid4().hex
        await self._store(framedb_id).set(key, data, ttl)
        return make_frame_ptr(framedb_id, key)

    async def get(self, frame_ptr) -> bytes:
        """The frame a frame_ptr names (bytes-like or str JSON)."""
        try:
            ptr = _decode_ptr(frame_ptr)
        except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as exc:
            raise FrameError(f"malformed frame_ptr: {exc}") from None
        data = await self._store(ptr.framedb_id).get(ptr.key)
        if data is None:
            raise FrameError(f"frame {ptr.key!r} not found in framedb {ptr.framedb_id!r}")
        return data

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()
        self._stores.clear()
