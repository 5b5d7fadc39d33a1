"""Plain per-image training records, lazy mask sources, class matching and load reports.

Loaders (COCO json, CVAT XML) produce the same records, so augmentation and training never
know the annotation format. Masks stay in their compact source form (polygon, RLE, crop) until
a sample is built: decoding every full-size mask at load time would cost gigabytes.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from barrier_annotator.cvat.polygons import polygons_to_mask as _polygons_to_mask
from barrier_annotator.cvat.polygons import polygons_to_rle

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PolygonSource:
    """COCO-convention polygons (flat ``x0, y0, x1, y1, ...`` in pixels), one or more parts.

    Kept as coordinates so geometric augmentation moves the vertices and rasterises once at the
    output size, exactly as detectron2 does for polygon annotations.
    """

    polygons: tuple[np.ndarray, ...]

    def decode(self, height: int, width: int) -> np.ndarray:
        return polygons_to_mask(self.polygons, height, width)

    def area(self, height: int, width: int) -> int:
        return int(mask_util.area(_merged_polygon_rle(self.polygons, height, width)))


@dataclass(frozen=True, eq=False)
class RLESource:
    """A compressed COCO RLE (``{"size": [h, w], "counts": bytes}``) over the whole image."""

    rle: dict

    def decode(self, height: int, width: int) -> np.ndarray:
        if list(self.rle["size"]) != [height, width]:
            raise ValueError(f"RLE size {self.rle['size']} != image size {[height, width]}")
        return mask_util.decode(self.rle).astype(bool)

    def area(self, height: int, width: int) -> int:
        return int(mask_util.area(self.rle))


@dataclass(frozen=True, eq=False)
class BitmaskSource:
    """Bool pixels of a crop and its box ``(x0, y0, x1, y1)`` (exclusive ends) in the image."""

    crop: np.ndarray
    box: tuple[int, int, int, int]

    def decode(self, height: int, width: int) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        if x1 > width or y1 > height:
            raise ValueError(f"mask box {self.box} exceeds the {width}x{height} image")
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = self.crop
        return mask

    def area(self, height: int, width: int) -> int:
        return int(np.count_nonzero(self.crop))


@dataclass(frozen=True, eq=False)
class UnionSource:
    """Several sources that are one object (CVAT shapes sharing a group): the union of their masks."""

    parts: tuple[PolygonSource | RLESource | BitmaskSource, ...]

    def decode(self, height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        for part in self.parts:
            mask |= part.decode(height, width)
        return mask

    def area(self, height: int, width: int) -> int:
        return int(np.count_nonzero(self.decode(height, width)))


MaskSource = PolygonSource | RLESource | BitmaskSource | UnionSource


@dataclass(frozen=True)
class InstanceRecord:
    """One labelled object: contiguous class index in the MODEL's order and its mask source."""

    category_id: int
    mask: MaskSource
    source_id: Any = None  # annotation id / shape position, for messages
    iscrowd: bool = False


@dataclass(frozen=True)
class ImageRecord:
    """One image: absolute file path, annotated size, id unique within its dataset, instances."""

    file_name: str
    height: int
    width: int
    image_id: int
    instances: tuple[InstanceRecord, ...] = ()
    dataset: str = ""


def polygons_to_mask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise polygon parts as COCO, detectron2 and CVAT do (the product's one implementation)."""
    return _polygons_to_mask(polygons, height, width)


def _merged_polygon_rle(polygons: Sequence[np.ndarray], height: int, width: int) -> dict:
    return polygons_to_rle(polygons, height, width)


def normalise_name(name: str) -> str:
    """Case, spaces and dashes ignored: "Rail Top", "rail-top" and "rail_top" are one class."""
    return re.sub(r"[\s\-_]+", "_", name.strip().casefold())


def match_class_names(dataset_names: Mapping[Any, str], class_names: Sequence[str],
                      source: str) -> dict[Any, int]:
    """Map dataset category keys to the model's class indices BY NAME (never by id or order).

    Exact names first, then :func:`normalise_name`; dataset categories without a model class are
    left out (their instances are reported as skipped), model classes absent from the dataset
    are warned about.
    """
    exact = {name: index for index, name in enumerate(class_names)}
    loose = {normalise_name(name): index for index, name in enumerate(class_names)}
    if len(loose) != len(class_names):
        raise ValueError(f"model class names collide after normalisation: {list(class_names)}")
    mapping: dict[Any, int] = {}
    for key, name in dataset_names.items():
        if name in exact:
            mapping[key] = exact[name]
        elif normalise_name(name) in loose:
            mapping[key] = loose[normalise_name(name)]
            logger.info("%s: dataset category %r matched model class %r by normalised name",
                        source, name, class_names[mapping[key]])
    missing = [name for index, name in enumerate(class_names) if index not in mapping.values()]
    if missing:
        logger.warning("%s: model classes %s have no category in the dataset", source, missing)
    return mapping


@dataclass
class DatasetReport:
    """What a loader kept and skipped, and why: printed once per dataset, kept for tests/tools."""

    source: str
    class_names: Sequence[str]
    images_total: int = 0
    images_kept: int = 0
    instances_kept: Counter = field(default_factory=Counter)
    crowd_kept: int = 0
    skipped_images: Counter = field(default_factory=Counter)
    skipped_instances: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def keep_instance(self, category_id: int, iscrowd: bool = False) -> None:
        self.instances_kept[self.class_names[category_id]] += 1
        self.crowd_kept += int(iscrowd)

    def skip_instance(self, reason: str, example: str) -> None:
        self.skipped_instances[reason] += 1
        self._example(reason, example)

    def skip_image(self, reason: str, example: str, instances: int = 0) -> None:
        self.skipped_images[reason] += 1
        self._example(reason, example)
        if instances:
            self.skipped_instances[f"{reason} (its annotations)"] += instances

    def note(self, reason: str, example: str) -> None:
        """Something changed but nothing dropped (e.g. a degenerate part of a kept polygon)."""
        self.notes[reason] += 1
        self._example(reason, example)

    def _example(self, reason: str, example: str) -> None:
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(example)

    @property
    def total_instances(self) -> int:
        return sum(self.instances_kept.values())

    def summary(self) -> str:
        per_class = ", ".join(f"{name} {self.instances_kept.get(name, 0)}" for name in self.class_names)
        lines = [f"{self.source}: kept {self.images_kept}/{self.images_total} images, "
                 f"{self.total_instances} instances ({per_class})"]
        if self.crowd_kept:
            lines.append(f"  {self.crowd_kept} iscrowd=1 annotations kept as instances "
                         "(CVAT's COCO export writes mask shapes that way)")
        for title, counter in (("skipped images", self.skipped_images),
                               ("skipped instances", self.skipped_instances),
                               ("note", self.notes)):
            for reason, count in sorted(counter.items()):
                examples = ", ".join(self.examples.get(reason, []))
                lines.append(f"  {title}: {count} x {reason}" + (f" (e.g. {examples})" if examples else ""))
        return "\n".join(lines)

    def log(self, log: logging.Logger = logger) -> None:
        skipped = self.skipped_images or self.skipped_instances
        log.log(logging.WARNING if skipped else logging.INFO, "%s", self.summary())


def count_instances(records: Iterable[ImageRecord], class_names: Sequence[str]) -> dict[str, int]:
    counts = Counter(inst.category_id for record in records for inst in record.instances)
    return {name: counts.get(index, 0) for index, name in enumerate(class_names)}
