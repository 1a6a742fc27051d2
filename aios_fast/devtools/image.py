"""``aios-fast block image BLOCK.json``: a Dockerfile for an image of the user's own
Block, ``FROM`` aios-fast's image: the block's module (``initSettings.block``, a
``module.py`` or package folder beside the document), its ``requirements.txt`` when
there is one, and the document itself at ``/block/block.json``. Build it with the
document's folder as the context, then point the manifests at it::

    aios-fast block image myblock.json > Dockerfile
    docker build -t myblock:1 .
    aios-fast block manifests myblock.json --image myblock:1 | kubectl apply -f -
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AiosFastError

__all__ = ["BASE_IMAGE", "dockerfile"]

BASE_IMAGE = "aios-fast:latest"
USER = "10001"  # the base image's non-root user


def dockerfile(document_path: str, block: str, base: str = BASE_IMAGE) -> str:
    """The Dockerfile text for the block class ``block`` ("module:Class") whose document
    is ``document_path``; AiosFastError (one line) when its module is not beside it."""
    doc = Path(document_path)
    folder = doc.parent
    top = block.partition(":")[0].split(".")[0]
    copies: list[str] = []
    if top != "aios_fast":  # a block of ours is in the base image already
        if (folder / top).is_dir():
            copies.append(f"COPY {top}/ /block/{top}/")
        elif (folder / f"{top}.py").is_file():
            copies.append(f"COPY {top}.py /block/")
        else:
            raise AiosFastError(f"block image: the block's module {top!r} is neither {top}.py "
                                f"nor a {top}/ folder beside {doc}")  # fmt: skip
    lines = [
        f"# The image of block {block}: {base} with the block's code and document.",
        f"#   docker build -t <name:tag> {folder}   (this file in that folder)",
        f"FROM {base}",
        "WORKDIR /block",
    ]
    if (folder / "requirements.txt").is_file():
        lines += [
            "COPY requirements.txt /block/",
            "USER 0",  # numeric, as the base image's: pip installs as root
            "RUN python -m pip install --disable-pip-version-check --no-cache-dir "
            "-r /block/requirements.txt",
            f"USER {USER}",
        ]
    lines += [*copies, f"COPY {doc.name} /block/block.json", "ENV PYTHONPATH=/block"]
    return "\n".join(lines) + "\n"
