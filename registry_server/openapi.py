"""The OpenAPI 3.1 description of the registry API, served at GET /openapi.json.

Document schemas come from the msgspec Structs in ``schemas.py``, so the description
and the validation cannot drift apart.
"""

from __future__ import annotations

import msgspec

from .schemas import Block, Cluster, VDag, VDagController

__all__ = ["build_spec"]

_ANY_OBJECT = {"type": "object"}
_ENVELOPE = {
    "type": "object",
    "properties": {"success": {"type": "boolean"}, "data": {}, "message": {"type": "string"}},
    "required": ["success"],
}


def _responses(ok: str, *errors: str) -> dict:
    out = {ok: {"description": "success", "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Envelope"}}}}}  # fmt: skip
    for status in errors:
        out[status] = {"description": "error", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Envelope"}}}}  # fmt: skip
    return out


def _body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _id(name: str) -> list:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def _registry_paths(item_prefix: str, create_path: str, list_path: str | None,
                    query_path: str, schema_ref: str) -> dict:  # fmt: skip
    ref = {"$ref": f"#/components/schemas/{schema_ref}"}

    def op(body: dict | None, *statuses: str) -> dict:
        spec = {"responses": _responses(*statuses)}
        if body is not None:
            spec["requestBody"] = _body(body)
        return spec

    paths: dict = {
        create_path: {"post": op(ref, "201", "400", "409")},
        query_path: {"post": op(_ANY_OBJECT, "200", "400")},
        item_prefix + "/{id}": {
            "parameters": _id("id"),
            "get": op(None, "200", "404"),
            "put": op(_ANY_OBJECT, "200", "400", "404"),
            "delete": op(None, "200", "404"),
        },
    }
    if list_path:
        paths.setdefault(list_path, {})["get"] = {
            "parameters": [
                {"name": "skip", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
            ],
            "responses": _responses("200", "400"),
        }  # fmt: skip
    return paths


def build_spec() -> dict:
    _, components = msgspec.json.schema_components(
        [Cluster, Block, VDag, VDagController], ref_template="#/components/schemas/{name}"
    )
    components["Envelope"] = _ENVELOPE
    paths: dict = {"/health": {"get": {"responses": _responses("200")}}}
    paths |= _registry_paths("/clusters", "/clusters", "/clusters", "/clusters/query", "Cluster")
    paths |= _registry_paths("/blocks", "/blocks", "/blocks", "/blocks/query", "Block")
    paths |= _registry_paths("/vdag", "/vdag", "/vdags", "/vdags", "VDag")
    paths["/vdags"]["post"] = {
        "requestBody": _body(_ANY_OBJECT),
        "responses": _responses("200", "400"),
    }
    paths |= _registry_paths("/vdag-controller", "/vdag-controller", "/vdag-controllers",
                             "/vdag-controllers", "VDagController")  # fmt: skip
    paths["/vdag-controllers/by-vdag-uri/{uri}"] = {
        "parameters": _id("uri"),
        "get": {"responses": _responses("200")},
    }
    index = {"type": "object", "description": '{"field": "a.b"} or {"sort": {"a": 1}}'}
    for name in ("clusters", "blocks", "vdags", "vdag-controllers"):
        paths[f"/indexes/{name}"] = {
            "get": {"responses": _responses("200")},
            "post": {"requestBody": _body(index), "responses": _responses("201", "400")},
            "delete": {"requestBody": _body(index), "responses": _responses("200", "400", "404")},
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "AIOSv1 registries (aios-fast)", "version": "0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }
