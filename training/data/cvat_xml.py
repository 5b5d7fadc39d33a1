"""CVAT for images 1.1 XML -> image records, through the project's CVAT format module.

``<mask>`` shapes become bitmask sources (their crop and box, decoded by ``barrier_annotator.cvat``),
``<polygon>`` shapes polygon sources. Polygons are rasterised like COCO polygons (pycocotools)
so that the same CVAT task trains identically from its XML and from its COCO export. Other
shape kinds (box, polyline, points, ellipse, skeleton, tag, ...) cannot train an instance-mask
model and are reported as skipped.

Groups: shapes of one label sharing a non-zero ``group_id`` within an image are ONE object (its
mask the union of theirs). That is how CVAT marks an object drawn in several pieces (CVAT
polygons have one outline each; ``barrier-label --polygons`` and the cvat-sdk function write a
split rail that way), and how Datumaro, which CVAT's exports go through, groups instances.
Shapes of different labels in one group stay separate objects (a person may group a rail with
its post): a class is never guessed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from barrier_annotator.cvat import CvatDocument, CvatXmlError, MaskShape, PolygonShape

from .coco import DatasetFormatError
from .dataset_records import (
    BitmaskSource,
    DatasetReport,
    ImageRecord,
    InstanceRecord,
    MaskSource,
    PolygonSource,
    UnionSource,
    match_class_names,
)

logger = logging.getLogger(__name__)


def load_cvat_xml(xml_path: str | os.PathLike[str], image_root: str | os.PathLike[str],
                  class_names: Sequence[str], dataset_name: str = "",
                  check_files: bool = True) -> tuple[list[ImageRecord], DatasetReport]:
    """Read a CVAT for images 1.1 export; images are ``image_root / <image name>``."""
    xml_path, image_root = Path(xml_path), Path(image_root)
    source = dataset_name or str(xml_path)
    if not xml_path.is_file():
        raise DatasetFormatError(f"annotation file not found: {xml_path}")
    try:
        document = CvatDocument.load(xml_path)
    except CvatXmlError as error:
        raise DatasetFormatError(str(error)) from None
    if document.track_count and not document.images:  # a "CVAT for video" export: say so, train nothing
        raise DatasetFormatError(document.image_export_problem() or f"{xml_path}: no <image>")
    if document.version not in (None, "1.1"):
        logger.warning("%s: CVAT XML version %r, expected 1.1", xml_path, document.version)

    shape_labels = {shape.label for image in document.images for shape in image.shapes()}
    label_names = document.label_names() | shape_labels
    mapping = match_class_names({name: name for name in sorted(label_names)}, class_names, source)
    report = DatasetReport(source=source, class_names=tuple(class_names))
    report.images_total = len(document.images)
    records = []
    for image in document.images:
        shapes = image.shapes()
        path = image_root / image.name
        if check_files and not path.is_file():
            report.skip_image("missing image file", str(path), len(shapes))
            continue
        objects: dict[Any, list[tuple[int, MaskSource]]] = {}  # first position's key keeps file order
        for position, shape in enumerate(shapes):
            example = f"{image.name} #{position} <{shape.kind}>"
            if shape.label not in mapping:
                report.skip_instance(f"label {shape.label!r} not among the model classes", example)
                continue
            try:
                mask = _mask_source(shape)
            except CvatXmlError as error:
                report.skip_instance("unreadable shape", f"{example}: {error.problem}")
                continue
            if mask is None:
                report.skip_instance(f"<{shape.kind}> shapes carry no mask", example)
                continue
            key = (shape.label, shape.group_id) if shape.group_id else position
            objects.setdefault(key, []).append((position, mask))
        instances = []
        for parts in objects.values():
            position, label = parts[0][0], shapes[parts[0][0]].label
            mask = _united(parts)
            example = f"{image.name} #{position}" + (f" (group of {len(parts)})" if len(parts) > 1 else "")
            if mask.area(image.height, image.width) == 0:
                report.skip_instance("empty mask", example)
                continue
            if len(parts) > 1:
                report.note("grouped shapes united into one object (CVAT group_id)", example)
            instances.append(InstanceRecord(mapping[label], mask, f"{image.name}#{position}"))
            report.keep_instance(mapping[label])
        records.append(ImageRecord(str(path.resolve()), image.height, image.width, image.id,
                                   tuple(instances), source))
        report.images_kept += 1
    return records, report


def _united(parts: list[tuple[int, MaskSource]]) -> MaskSource:
    """One object's mask source: polygons stay polygons (augmentation moves their vertices)."""
    sources = [source for _, source in parts]
    if len(sources) == 1:
        return sources[0]
    if all(isinstance(source, PolygonSource) for source in sources):
        return PolygonSource(tuple(p for source in sources for p in source.polygons))  # type: ignore[union-attr]
    return UnionSource(tuple(sources))


def _mask_source(shape: object) -> BitmaskSource | PolygonSource | None:
    if isinstance(shape, MaskShape):
        return BitmaskSource(shape.crop(), shape.box)
    if isinstance(shape, PolygonShape):
        return PolygonSource((np.asarray(shape.points, dtype=np.float64),))
    return None
