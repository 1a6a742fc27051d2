"""The controller in the registry: on start it stores its compiled vDAG document
(``POST /vdag``, or ``PUT /vdag/<uri>`` with ``$set`` when it exists: nodes, graph,
controller, ``assignment_info``, ``compiled_graph_data``, ``status``) and registers
itself in the vDAG-controller registry (``POST /vdag-controller``: ``vdag_controller_id``,
``vdag_uri``, ``public_url``, ``cluster_id``); on stop it deletes its own entry
(``DELETE /vdag-controller/<id>``; the vDAG document stays, as the original kept it).
A registry that cannot be reached or refuses is a one-line error at start."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from ...errors import AiosFastError

__all__ = ["ControllerRegistration"]


class ControllerRegistration:
    def __init__(self, url: str, doc: dict, controller_id: str, public_url: str,
                 cluster_id: str = "", token: str | None = None) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.doc = _registry_doc(doc)
        self.controller_id = controller_id
        self.public_url = public_url
        self.cluster_id = cluster_id
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, dict]:
        try:
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(headers=self.headers, timeout=timeout) as session:
                async with session.request(method, self.url + path, json=body) as resp:
                    try:
                        payload = await resp.json(content_type=None)
                    except ValueError:
                        payload = {}
                    return resp.status, payload if isinstance(payload, dict) else {}
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise AiosFastError(f"registry {self.url}: {exc}") from None

    async def register(self) -> None:
        uri = self.doc["vdagURI"]
        status, body = await self._call("POST", "/vdag", self.doc)
        if status == 409:
            fields = {k: v for k, v in self.doc.items()
                      if k not in ("vdagURI", "vdagName", "vdagVersion")}  # fmt: skip
            status, body = await self._call("PUT", f"/vdag/{quote(uri, safe='')}",
                                            {"$set": fields})  # fmt: skip
        if status >= 300:
            raise AiosFastError(f"registry {self.url}: storing vDAG {uri} failed "
                                f"({status}): {body.get('message', body)}")  # fmt: skip
        entry = {"vdag_controller_id": self.controller_id, "vdag_uri": uri,
                 "public_url": self.public_url, "cluster_id": self.cluster_id}  # fmt: skip
        status, body = await self._call("POST", "/vdag-controller", entry)
        if status == 409:  # a stale entry of ours (a crash): take it over
            await self.leave()
            status, body = await self._call("POST", "/vdag-controller", entry)
        if status >= 300:
            raise AiosFastError(f"registry {self.url}: registering controller "
                                f"{self.controller_id} failed ({status}): "
                                f"{body.get('message', body)}")  # fmt: skip

    async def leave(self) -> None:
        await self._call("DELETE", f"/vdag-controller/{quote(self.controller_id, safe='')}")


def _registry_doc(doc: dict) -> dict:
    """The compiled document as the registry's vDAG schema takes it."""
    out = dict(doc)
    version = dict(out.get("vdagVersion") or {})
    if "release-tag" in version and "releaseTag" not in version:
        version["releaseTag"] = version.pop("release-tag")
    out["vdagVersion"] = version
    out.pop("vdagURI", None)  # the registry sets it from name and version
    out["vdagURI"] = (
        f"{out['vdagName']}:{version.get('version', '')}-{version.get('releaseTag', '')}"
    )
    return out
