"""COCO instance json -> image records, keeping what detectron2's pipeline would drop.

Differences from detectron2's ``load_coco_json`` + ``DatasetMapper``, on purpose:
- ``iscrowd: 1`` annotations are instances: CVAT's COCO export writes every *mask* shape as a
  whole-image RLE with ``iscrowd: 1``, and dropping them silently loses those labels.
- categories are matched to the model's classes by name, not by id order.
- everything skipped is counted with its reason in a :class:`DatasetReport`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from .dataset_records import (
    DatasetReport,
    ImageRecord,
    InstanceRecord,
    MaskSource,
    PolygonSource,
    RLESource,
    match_class_names,
)

logger = logging.getLogger(__name__)


class DatasetFormatError(ValueError):
    """An annotation file that cannot be read as the stated format; names file and problem."""


def load_coco_instances(json_path: str | os.PathLike[str], image_root: str | os.PathLike[str],
                        class_names: Sequence[str], dataset_name: str = "",
                        check_files: bool = True) -> tuple[list[ImageRecord], DatasetReport]:
    """Read a COCO instances json; images are ``image_root / file_name``.

    Returns records in the json's image order (images without kept instances included: the
    caller decides, like detectron2's FILTER_EMPTY_ANNOTATIONS) and the load report.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    source = dataset_name or str(json_path)
    data = _read_json(json_path)
    report = DatasetReport(source=source, class_names=tuple(class_names))
    categories = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
    mapping = match_class_names(categories, class_names, source)

    images: dict[Any, dict] = {}
    for image in data.get("images", []):
        if image.get("id") in images:
            raise DatasetFormatError(f"{json_path}: image id {image.get('id')!r} appears twice")
        images[image.get("id")] = image
    per_image: dict[Any, list[dict]] = {image_id: [] for image_id in images}
    for ann in data.get("annotations", []):
        if ann.get("image_id") not in per_image:
            report.skip_instance("annotation of an unknown image id", f"ann {ann.get('id')}")
            continue
        per_image[ann["image_id"]].append(ann)

    records = []
    report.images_total = len(images)
    for image_id, image in images.items():
        anns = per_image[image_id]
        try:
            file_name, height, width = str(image["file_name"]), int(image["height"]), int(image["width"])
        except (KeyError, TypeError, ValueError):
            report.skip_image("image entry without file_name/height/width", f"id {image_id}", len(anns))
            continue
        path = image_root / file_name
        if check_files and not path.is_file():
            report.skip_image("missing image file", str(path), len(anns))
            continue
        instances = []
        for ann in anns:
            instance = _instance(ann, mapping, categories, height, width, report)
            if instance is not None:
                instances.append(instance)
                report.keep_instance(instance.category_id, instance.iscrowd)
        records.append(ImageRecord(str(path.resolve()), height, width, _int_id(image_id, json_path),
                                   tuple(instances), source))
        report.images_kept += 1
    return records, report


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DatasetFormatError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: not valid json: {error}") from None
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DatasetFormatError(f"{path}: not a COCO instances file (needs 'images' and 'categories')")
    return data


def _int_id(image_id: Any, path: Path) -> int:
    if isinstance(image_id, bool) or not isinstance(image_id, int):
        raise DatasetFormatError(f"{path}: image id {image_id!r} is not an integer")
    return image_id


def _instance(ann: dict, mapping: dict, categories: dict, height: int, width: int,
              report: DatasetReport) -> InstanceRecord | None:
    label = f"ann {ann.get('id')}"
    category = ann.get("category_id")
    if category not in mapping:
        name = categories.get(category, category)
        report.skip_instance(f"category {name!r} not among the model classes", label)
        return None
    segmentation = ann.get("segmentation")
    if not segmentation:
        report.skip_instance("no segmentation (box-only annotation)", label)
        return None
    try:
        mask = _mask_source(segmentation, height, width, report, label)
    except (ValueError, TypeError, KeyError) as error:
        report.skip_instance("unreadable segmentation", f"{label}: {error}")
        return None
    if mask is None:
        return None
    if mask.area(height, width) == 0:
        report.skip_instance("empty mask", label)
        return None
    return InstanceRecord(mapping[category], mask, ann.get("id"), bool(ann.get("iscrowd", 0)))


def _mask_source(segmentation: Any, height: int, width: int, report: DatasetReport,
                 label: str) -> MaskSource | None:
    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            report.skip_instance("RLE size differs from the image size", f"{label}: {size}")
            return None
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if sum(counts) != height * width:
                raise ValueError(f"uncompressed RLE sums to {sum(counts)}, not {height * width}")
            rle = mask_util.frPyObjects({"size": size, "counts": counts}, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return RLESource(rle)
    if isinstance(segmentation, list):
        parts = [np.asarray(p, dtype=np.float64) for p in segmentation]
        valid = tuple(p for p in parts if p.ndim == 1 and p.size >= 6 and p.size % 2 == 0
                      and np.isfinite(p).all())
        if len(valid) != len(parts):
            report.note("polygon part with < 3 points dropped", label)
        if not valid:
            report.skip_instance("no valid polygon", label)
            return None
        return PolygonSource(valid)
    raise TypeError(f"segmentation of type {type(segmentation).__name__}")
