"""Records -> augmented training samples: (CHW float 0..255 image, {"labels", "masks"}).

Polygon annotations are transformed as vertices and rasterised once at the output size; RLE
and CVAT bitmasks are decoded at the original size and transformed with nearest neighbour:
both exactly as detectron2's mappers treat the two kinds, so masks stay aligned with the image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mask2former.io import read_image

from .augment import Augmentation, ComposedTransform, apply_augmentations, build_train_augmentation
from .dataset_records import ImageRecord, InstanceRecord, PolygonSource, polygons_to_mask

logger = logging.getLogger(__name__)

SampleKey = int | tuple[int, Sequence[int]]
"""A dataset index, or (index, seed entropy) as :class:`TrainingSampler` yields for determinism."""


class ImageSizeMismatchError(ValueError):
    """The image file's size differs from the size its annotations were made for."""


def load_image(record: ImageRecord) -> np.ndarray:
    """RGB uint8 HxWx3 (EXIF orientation applied), checked against the annotated size."""
    image = read_image(record.file_name)
    if image.shape[:2] != (record.height, record.width):
        hint = " (EXIF-rotated?)" if image.shape[:2] == (record.width, record.height) else ""
        raise ImageSizeMismatchError(
            f"{record.file_name}: image is {image.shape[1]}x{image.shape[0]} but annotated as "
            f"{record.width}x{record.height}{hint}")
    return image


class InstanceMapper:
    """One record -> augmented image tensor and target, for a fixed augmentation list."""

    def __init__(self, augmentations: Sequence[Augmentation], image_format: str = "RGB") -> None:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {image_format!r}: expected RGB or BGR")
        self.augmentations = list(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg: Any) -> InstanceMapper:
        if cfg.INPUT.get("MASK_FORMAT", "bitmask") not in ("bitmask", "polygon"):
            raise ValueError(f"INPUT.MASK_FORMAT {cfg.INPUT.MASK_FORMAT!r}: expected bitmask or polygon")
        return cls(build_train_augmentation(cfg), cfg.INPUT.FORMAT)

    def __call__(self, record: ImageRecord, rng: np.random.Generator,
                 image: np.ndarray | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        image = load_image(record) if image is None else image
        image, transform = apply_augmentations(self.augmentations, image, rng)
        height, width = image.shape[:2]
        labels, masks = [], []
        for instance in record.instances:
            mask = transform_mask(instance, transform, record.height, record.width, height, width)
            if mask.any():  # cropped away by LSJ / RandomCrop: drop, as detectron2 filters empties
                labels.append(instance.category_id)
                masks.append(mask)
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask_tensor = (torch.from_numpy(np.stack(masks)) if masks
                       else torch.zeros((0, height, width), dtype=torch.bool))
        target = {"labels": torch.as_tensor(labels, dtype=torch.int64), "masks": mask_tensor,
                  "image_id": record.image_id}
        return tensor, target


def transform_mask(instance: InstanceRecord, transform: ComposedTransform, height: int, width: int,
                   out_height: int, out_width: int) -> np.ndarray:
    """The instance's bool mask after ``transform`` (at ``out_height x out_width``)."""
    source = instance.mask
    if isinstance(source, PolygonSource):
        moved = [transform.apply_coords(np.asarray(p, dtype=np.float64).reshape(-1, 2)).reshape(-1)
                 for p in source.polygons]
        return polygons_to_mask(moved, out_height, out_width)
    mask = transform.apply_mask(source.decode(height, width))
    if mask.shape != (out_height, out_width):
        raise AssertionError(f"mask {mask.shape} misaligned with image {(out_height, out_width)}")
    return mask


class InstanceDataset(Dataset):
    """Map-style dataset over records; keys from :class:`TrainingSampler` make augmentation
    deterministic (seeded per sample), plain integer keys draw fresh randomness."""

    def __init__(self, records: Sequence[ImageRecord], mapper: InstanceMapper) -> None:
        self.records = list(records)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(key, tuple):
            index, entropy = key
            rng = np.random.default_rng(list(entropy))
        else:
            index, rng = int(key), np.random.default_rng()
        return self.mapper(self.records[index], rng)


class ImageDataset(Dataset):
    """Records with their decoded RGB uint8 HxWx3 image, for evaluation / inference loops."""

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[ImageRecord, np.ndarray]:
        record = self.records[index]
        return record, load_image(record)


def collate(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Keep variable-size images as a list (the model pads the batch itself)."""
    return [item[0] for item in batch], [item[1] for item in batch]
