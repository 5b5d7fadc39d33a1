"""The folder a new CVAT task is made from: the chosen frames and their pre-labels.

    <folder>/images/0001_<name>      the chosen files, byte for byte (their content hash is their
                                     identity: CVAT keeps the bytes, so the frame is recognised in
                                     the task's exports and in the training set)
    <folder>/annotations.xml         CVAT for images 1.1: the model's shapes, source "semi-auto",
                                     masks or polygons as each label's type asks (the labelling
                                     tool's rules and records: ``barrier-label``'s pieces)

Names start with the rank, so CVAT's default (lexicographic) order shows the most useful frame
first; the rest of the name says where the frame came from. Written into a temporary folder and
renamed: a staged folder is always complete.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cvat import CvatDocument, LabelSpec
from ..labelling.ownership import AnnotationMerger
from ..labelling.prediction_records import build_record, shape_kinds
from .run import ChosenFrame

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StagedTask:
    folder: Path
    images: list[Path]
    annotations: Path
    names: dict[str, str]  # content hash -> the frame's name in the new task
    shapes: int


def task_frame_name(rank: int, name: str) -> str:
    """``0003_task_12_frame_000123.jpg``: rank first, then the original path flattened."""
    stem = _UNSAFE.sub("_", name.replace("/", "_")).strip("._") or "frame"
    return f"{rank:04d}_{stem}"


def stage_task(folder: Path, chosen: Sequence[ChosenFrame], labels: Sequence[LabelSpec], class_names: Sequence[str],
               *, task_name: str, polygons: bool = False) -> StagedTask:
    """Copy the chosen frames and write their pre-labels into ``folder`` (replaced as a whole)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        document = CvatDocument.new(list(labels), task_name=task_name)
        kinds = shape_kinds(document, class_names, polygons)
        names: dict[str, str] = {}
        paths = []
        for index, frame in enumerate(chosen):
            if frame.instances is None:
                raise ValueError(f"{frame.scored.frame.name}: no instances predicted")
            name = task_frame_name(frame.pick.rank, frame.scored.frame.name)
            target = staging / "images" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(frame.scored.frame.path, target)
            paths.append(folder / "images" / name)
            names[frame.scored.score.key] = name
            height, width = frame.instances.image_size
            document.add_image(name, width, height, image_id=index)
        merger = AnnotationMerger(document)
        shapes = 0
        for frame in chosen:
            record = build_record(names[frame.scored.score.key], frame.instances, kinds=kinds,
                                  generation="barrier-select", settings={})
            merger.apply(record)
            shapes += len(merger.written.get(record.image, ()))
        document.save(staging / "annotations.xml")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return StagedTask(folder, paths, folder / "annotations.xml", names, shapes)
