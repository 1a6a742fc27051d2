"""Loading the user's Block: ``module:Class`` -> an instance, and its failures told as
the user's own error (their exception and their own frames, once) with no traceback of
ours (runpy, asyncio, uvloop, this module)."""

from __future__ import annotations

import importlib
import os
import traceback

from ..block import Block
from ..errors import AiosFastError

__all__ = ["BlockLoadError", "load_block", "overrides", "user_traceback"]

_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # aios_fast/


class BlockLoadError(AiosFastError):
    """The Block's module or ``__init__`` raised: ``str()`` is the user's traceback
    (their frames only) and a last line naming the block spec."""


def _is_user_frame(filename: str) -> bool:
    path = os.path.abspath(filename)
    if filename.startswith("<"):  # <frozen runpy>, <string>
        return False
    if path.startswith(_OURS + os.sep):
        return False
    return "asyncio" + os.sep not in path and "uvloop" + os.sep not in path


def user_traceback(exc: BaseException) -> str:
    """``exc`` as Python prints it, keeping only the frames of the user's code
    (chained causes included, each with its own frames)."""
    lines: list[str] = []
    seen: set[int] = set()

    def add(e: BaseException) -> None:
        if id(e) in seen:
            return
        seen.add(id(e))
        if e.__cause__ is not None:
            add(e.__cause__)
            lines.append("\nThe above exception was the direct cause of the following:\n\n")
        elif e.__context__ is not None and not e.__suppress_context__:
            add(e.__context__)
            lines.append("\nDuring handling of the above exception, another occurred:\n\n")
        frames = [f for f in traceback.extract_tb(e.__traceback__) if _is_user_frame(f.filename)]
        if frames:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.format_list(frames))
        lines.extend(traceback.format_exception_only(type(e), e))

    add(exc)
    return "".join(lines).rstrip("\n")


def load_block(spec: str, init_data: dict | None = None, parameters: dict | None = None) -> Block:
    """``module:Class`` -> an instance of that Block subclass. A spec that names nothing
    raises AiosFastError; the block's own module or ``__init__`` raising, BlockLoadError."""
    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise AiosFastError(f"block spec {spec!r} must be 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):  # the block's module itself
            raise AiosFastError(f"block spec {spec!r}: no module named {exc.name!r}") from None
        raise BlockLoadError(f"{user_traceback(exc)}\nblock {spec}: its module failed "
                             "to import") from None  # fmt: skip
    except Exception as exc:
        raise BlockLoadError(f"{user_traceback(exc)}\nblock {spec}: its module failed "
                             "to import") from None  # fmt: skip
    cls = getattr(module, class_name, None)
    if cls is None:
        raise AiosFastError(f"block spec {spec!r}: {module_name} has no {class_name}")
    try:
        return cls(init_data, parameters)
    except Exception as exc:
        raise BlockLoadError(f"{user_traceback(exc)}\nblock {spec}: __init__ "
                             "failed") from None  # fmt: skip


def overrides(block: Block, name: str) -> bool:
    """Whether the block's class replaces Block's ``name`` hook."""
    return getattr(type(block), name, None) is not getattr(Block, name, None)
