"""CVAT for images 1.1 XML -> image records, through the project's CVAT format module.

``<mask>`` shapes become bitmask sources (their crop and box, decoded by ``mask2former.cvat``),
``<polygon>`` shapes polygon sources. Polygons are rasterised like COCO polygons (pycocotools)
so that the same CVAT task trains identically from its XML and from its COCO export. Other
shape kinds (box, polyline, points, ellipse, skeleton, tag, ...) cannot train an instance-mask
model and are reported as skipped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mask2former.cvat import CvatDocument, CvatXmlError, MaskShape, PolygonShape

from .coco import DatasetFormatError
from .records import BitmaskSource, ImageRecord, InstanceRecord, LoadReport, PolygonSource, match_class_names

logger = logging.getLogger(__name__)


def load_cvat_xml(xml_path: str | os.PathLike[str], image_root: str | os.PathLike[str],
                  class_names: Sequence[str], dataset_name: str = "",
                  check_files: bool = True) -> tuple[list[ImageRecord], LoadReport]:
    """Read a CVAT for images 1.1 export; images are ``image_root / <image name>``."""
    xml_path, image_root = Path(xml_path), Path(image_root)
    source = dataset_name or str(xml_path)
    if not xml_path.is_file():
        raise DatasetFormatError(f"annotation file not found: {xml_path}")
    try:
        document = CvatDocument.load(xml_path)
    except CvatXmlError as error:
        raise DatasetFormatError(str(error)) from None
    if document.version not in (None, "1.1"):
        logger.warning("%s: CVAT XML version %r, expected 1.1", xml_path, document.version)

    shape_labels = {shape.label for image in document.images for shape in image.shapes()}
    label_names = document.label_names() | shape_labels
    mapping = match_class_names({name: name for name in sorted(label_names)}, class_names, source)
    report = LoadReport(source=source, class_names=tuple(class_names))
    report.images_total = len(document.images)
    records = []
    for image in document.images:
        shapes = image.shapes()
        path = image_root / image.name
        if check_files and not path.is_file():
            report.skip_image("missing image file", str(path), len(shapes))
            continue
        instances = []
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
            if mask.area(image.height, image.width) == 0:
                report.skip_instance("empty mask", example)
                continue
            instances.append(InstanceRecord(mapping[shape.label], mask, f"{image.name}#{position}"))
            report.keep_instance(mapping[shape.label])
        records.append(ImageRecord(str(path.resolve()), image.height, image.width, image.id,
                                   tuple(instances), source))
        report.images_kept += 1
    return records, report


def _mask_source(shape: object) -> BitmaskSource | PolygonSource | None:
    if isinstance(shape, MaskShape):
        return BitmaskSource(shape.crop(), shape.box)
    if isinstance(shape, PolygonShape):
        return PolygonSource((np.asarray(shape.points, dtype=np.float64),))
    return None
