"""``aios-fast vdag check``: a vDAG document checked without running anything.

``check(path, blocks=[a.json, ...], vdags=[sub.json, ...])`` reads the document, lists
the problems of its graph (``aios_fast.vdag.problems``) and, when block documents are
given, compiles it against them (blocks named or assigned, sub-vDAGs expanded):
one line per problem, each naming the node, exit 2; else a one-line summary (or the
compiled document as JSON) and exit 0.
"""

from __future__ import annotations

import json
import sys

from ..errors import AiosFastError
from ..vdag import VDagDoc, VDagError, compile_vdag, load, problems

__all__ = ["check", "load_blocks", "load_vdags"]


def load_blocks(paths: list[str]) -> list[dict]:
    """Block documents (JSON files, each an object with an ``id``)."""
    blocks = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                block = json.loads(f.read())
        except OSError as exc:
            raise AiosFastError(f"cannot read block document: {exc}") from None
        except ValueError as exc:
            raise AiosFastError(f"block document {path}: not JSON ({exc})") from None
        if not isinstance(block, dict) or not isinstance(block.get("id"), str):
            raise AiosFastError(f"block document {path}: needs a string 'id'")
        blocks.append(block)
    return blocks


def load_vdags(paths: list[str]) -> dict[str, VDagDoc]:
    """Sub-vDAG documents by their vdagURI."""
    return {doc.uri: doc for doc in (load(p) for p in paths)}


def check(path: str, blocks: list[str] | None = None, vdags: list[str] | None = None,
          as_json: bool = False, out=None, err=None) -> int:  # fmt: skip
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        doc = load(path)
        lines = problems(doc)
        if not lines and blocks is not None:
            try:
                plan = compile_vdag(doc, load_blocks(blocks), load_vdags(vdags or []))
            except VDagError as exc:
                lines = exc.lines
    except VDagError as exc:
        lines = exc.lines
    if lines:
        for line in lines:
            print(f"{path}: {line}", file=err)
        return 2
    if as_json:
        print(json.dumps(_builtins(doc)), file=out)
    elif blocks is None:
        print(f"{path}: ok: {len(doc.nodes)} nodes (blocks not checked: give --blocks)",
              file=out)  # fmt: skip
    else:
        print(f"{path}: ok: {len(plan.nodes)} nodes on blocks "
              f"{', '.join(sorted({n.block_id for n in plan.nodes.values()}))}",
              file=out)  # fmt: skip
    return 0


def _builtins(doc: VDagDoc) -> dict:
    import msgspec

    return msgspec.to_builtins(doc)
