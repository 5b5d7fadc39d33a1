"""The frames to choose from: a folder of images, an unpacked "CVAT for images 1.1" export, or frames
pulled from CVAT (see :mod:`.cvat_pool`), each identified by the SHA-256 of its file.

The content hash is the frame's identity everywhere, as in the sync dataset store: the ledger of
chosen frames, the score cache and the training set all key on it, so the same frame under another
name, in another task or in a re-export is recognised as the same.

In an export, a frame that already carries a shape a person drew (``source="manual"``) counts as
labelled: it is not a candidate, and diversity keeps away from it. Shapes from a model (``auto``,
``semi-auto``) or an upload (``file``, which CVAT gives every uploaded shape, pre-labels included)
do not make a frame labelled.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mask2former.io import IMAGE_SUFFIXES, ImageDecodeError, decode_image

from ..cvat import CvatDocument, CvatXmlError
from ..labelling.names import UnsafeImageNameError, image_file

logger = logging.getLogger(__name__)

HUMAN_SOURCE = "manual"


class SourceError(ValueError):
    """The input cannot be used at all (no such folder, a malformed annotation file, no frame)."""


@dataclass(frozen=True)
class Frame:
    """One frame: ``name`` as outputs show it, the file, and where it comes from (CVAT ids)."""

    name: str
    path: Path
    origin: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedFrame:
    frame: Frame
    key: str
    image: np.ndarray
    data: bytes


@dataclass
class FramePool:
    """Candidates, frames already labelled (kept away from, never chosen), and the names that could
    not even be listed (an unsafe name in an export), with the reason."""

    candidates: list[Frame]
    labelled: list[Frame] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)
    description: str = ""


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_frame(frame: Frame) -> LoadedFrame:
    """Read, hash and decode one frame; ImageDecodeError says why it cannot be used."""
    try:
        data = frame.path.read_bytes()
    except OSError as error:
        raise ImageDecodeError(f"cannot read {frame.path}: {error.strerror or error}") from None
    return LoadedFrame(frame, content_key(data), decode_image(data), data)


def is_export(path: Path) -> bool:
    return (path / "annotations.xml").is_file()


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def folder_pool(root: Path, skip: Path | None = None) -> FramePool:
    """Every image file under ``root`` (sub-folders too), by relative path; nothing under ``skip``
    (the output folder, when it lies inside the input: its contact sheet is no frame)."""
    if not root.is_dir():
        raise SourceError(f"{root}: not a folder")
    frames = [Frame(path.relative_to(root).as_posix(), path) for path in sorted(root.rglob("*"))
              if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
              and not _inside(path, skip)]
    if not frames:
        raise SourceError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return FramePool(frames, description=f"folder {root} ({len(frames)} images)")


def export_pool(root: Path) -> FramePool:
    """The images of an unpacked CVAT for images 1.1 export; frames with a person's shapes are labelled."""
    try:
        document = CvatDocument.load(root / "annotations.xml")
    except CvatXmlError as error:
        raise SourceError(str(error)) from None
    problem = document.image_export_problem()
    if problem is not None:
        raise SourceError(problem)
    pool = FramePool([], description="")
    for entry in document.images:
        try:
            path = image_file(root / "images", entry.name)
        except UnsafeImageNameError as error:
            pool.problems.setdefault("bad_name", []).append(f"{entry.name}: {error}")
            continue
        frame = Frame(entry.name, path, {"export": str(root), "frame_id": entry.id})
        labelled = any(shape.source == HUMAN_SOURCE for shape in entry.shapes())
        (pool.labelled if labelled else pool.candidates).append(frame)
    pool.description = (f"export {root} ({len(pool.candidates)} candidate frames, {len(pool.labelled)} with "
                        f"shapes a person drew)")
    return pool


def input_pool(path: Path, skip: Path | None = None) -> FramePool:
    """A folder of images, or an export (a folder holding ``annotations.xml``); ``skip``: see
    :func:`folder_pool`."""
    return export_pool(path) if path.is_dir() and is_export(path) else folder_pool(path, skip)
