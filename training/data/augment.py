"""Training augmentation with detectron2's exact geometry, in numpy + PIL.

A small reimplementation instead of an augmentation library: the seed was trained with
detectron2's ``ResizeShortestEdge`` / ``RandomFlip`` (and upstream offers LSJ's ``ResizeScale``
+ ``FixedSizeCrop``); their size rounding (``int(x + 0.5)`` after capping the long side, or
``np.round`` for LSJ), PIL bilinear for uint8 images, nearest for masks and polygon vertex
transforms are what a checkpoint was tuned under, and no library reproduces all of them.

Each augmentation draws its parameters from an explicit ``numpy.random.Generator`` (detectron2
uses the global numpy RNG), so a sample's augmentation is a function of its seed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


class Transform:
    """A geometric transform fixed for one sample; applies to the image, masks and polygons alike."""

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """``coords`` [N, 2] as (x, y) floats."""
        raise NotImplementedError


@dataclass(frozen=True)
class ResizeTransform(Transform):
    height: int
    width: int
    new_height: int
    new_width: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8:
            raise TypeError(f"expected a uint8 image, got {image.dtype}")
        resized = Image.fromarray(image).resize((self.new_width, self.new_height), Image.Resampling.BILINEAR)
        return np.asarray(resized)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        resized = Image.fromarray(mask.astype(np.uint8)).resize((self.new_width, self.new_height),
                                                                  Image.Resampling.NEAREST)
        return np.asarray(resized).astype(bool)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        out = coords.astype(np.float64, copy=True)
        out[:, 0] *= self.new_width / self.width
        out[:, 1] *= self.new_height / self.height
        return out


@dataclass(frozen=True)
class FlipTransform(Transform):
    """Horizontal (``axis=1``) or vertical (``axis=0``) flip of an image ``extent`` pixels wide/high."""

    extent: int
    axis: int = 1

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(image, axis=self.axis))

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.flip(mask, axis=self.axis))

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        out = coords.astype(np.float64, copy=True)
        column = 0 if self.axis == 1 else 1
        out[:, column] = self.extent - out[:, column]
        return out


@dataclass(frozen=True)
class CropTransform(Transform):
    """Keep ``[y0:y0+height, x0:x0+width]`` (clamped at the image border, as numpy slicing is)."""

    x0: int
    y0: int
    width: int
    height: int

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0:self.y0 + self.height, self.x0:self.x0 + self.width]

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        return mask[self.y0:self.y0 + self.height, self.x0:self.x0 + self.width]

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords.astype(np.float64) - np.array([self.x0, self.y0], dtype=np.float64)


@dataclass(frozen=True)
class PadTransform(Transform):
    """Pad bottom/right; the image with ``image_value`` (LSJ: 128), masks with 0."""

    bottom: int
    right: int
    image_value: float = 128.0

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        pad = ((0, self.bottom), (0, self.right)) + ((0, 0),) * (image.ndim - 2)
        return np.pad(image, pad, mode="constant", constant_values=self.image_value)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        return np.pad(mask, ((0, self.bottom), (0, self.right)), mode="constant", constant_values=False)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords.astype(np.float64, copy=True)


class Augmentation:
    """Draws a :class:`Transform` for an image of a given size."""

    def get_transform(self, height: int, width: int, rng: np.random.Generator) -> Transform | None:
        raise NotImplementedError


def shortest_edge_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: scale the short side to ``short_edge``,
    cap the long side at ``max_size``, then round each side with ``int(x + 0.5)``."""
    scale = short_edge / min(height, width)
    if height < width:
        new_h, new_w = float(short_edge), scale * width
    else:
        new_h, new_w = scale * height, float(short_edge)
    if max(new_h, new_w) > max_size:
        cap = max_size / max(new_h, new_w)
        new_h, new_w = new_h * cap, new_w * cap
    return int(new_h + 0.5), int(new_w + 0.5)


class ResizeShortestEdge(Augmentation):
    """Short side from ``lengths`` ("choice": one of them; "range": uniform int in [min, max])."""

    def __init__(self, lengths: Sequence[int] | int, max_size: int = sys.maxsize,
                 sample_style: str = "range") -> None:
        lengths = (lengths, lengths) if isinstance(lengths, int) else tuple(int(v) for v in lengths)
        if sample_style not in ("range", "choice"):
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING {sample_style!r}: expected range or choice")
        if sample_style == "range" and len(lengths) != 2:
            raise ValueError(f"MIN_SIZE_TRAIN_SAMPLING 'range' needs two sizes, got {lengths}")
        self.lengths, self.max_size, self.sample_style = lengths, max_size, sample_style

    def get_transform(self, height: int, width: int, rng: np.random.Generator) -> Transform | None:
        if self.sample_style == "range":
            size = int(rng.integers(self.lengths[0], self.lengths[1] + 1))
        else:
            size = int(rng.choice(self.lengths))
        if size == 0:
            return None
        new_h, new_w = shortest_edge_size(height, width, size, self.max_size)
        return ResizeTransform(height, width, new_h, new_w)


class RandomFlip(Augmentation):
    def __init__(self, prob: float = 0.5, horizontal: bool = True) -> None:
        self.prob, self.horizontal = prob, horizontal

    def get_transform(self, height: int, width: int, rng: np.random.Generator) -> Transform | None:
        if rng.uniform() >= self.prob:
            return None
        return FlipTransform(width, axis=1) if self.horizontal else FlipTransform(height, axis=0)


class ResizeScale(Augmentation):
    """LSJ: fit the image into ``scale x target`` (scale uniform in [min, max]), ``np.round`` sizes."""

    def __init__(self, min_scale: float, max_scale: float, target_height: int, target_width: int) -> None:
        self.min_scale, self.max_scale = min_scale, max_scale
        self.target = (target_height, target_width)

    def get_transform(self, height: int, width: int, rng: np.random.Generator) -> Transform | None:
        scale = rng.uniform(self.min_scale, self.max_scale)
        target = np.multiply(self.target, scale)
        factor = min(target[0] / height, target[1] / width)
        new_h, new_w = np.round(np.multiply((height, width), factor)).astype(int)
        return ResizeTransform(height, width, int(new_h), int(new_w))


class FixedSizeCrop(Augmentation):
    """LSJ: a random ``crop_size`` window (one uniform draw positions both axes), then pad to it."""

    def __init__(self, crop_size: tuple[int, int], pad_value: float = 128.0) -> None:
        self.crop_size, self.pad_value = crop_size, pad_value

    def get_transform(self, height: int, width: int, rng: np.random.Generator) -> Transform | None:
        crop_h, crop_w = self.crop_size
        max_offset = np.maximum(np.subtract((height, width), self.crop_size), 0)
        y0, x0 = np.round(max_offset * rng.uniform(0.0, 1.0)).astype(int)
        out_h, out_w = min(height, crop_h), min(width, crop_w)
        return ComposedTransform((CropTransform(int(x0), int(y0), crop_w, crop_h),
                                  PadTransform(crop_h - out_h, crop_w - out_w, self.pad_value)))


class RandomCrop(Augmentation):
    """detectron2's ``RandomCrop`` (INPUT.CROP.TYPE relative, relative_range, absolute, absolute_range)."""

    def __init__(self, crop_type: str, crop_size: Sequence[float]) -> None:
        if crop_type not in ("relative", "relative_range", "absolute", "absolute_range"):
            raise ValueError(f"INPUT.CROP.TYPE {crop_type!r} is not supported")
        self.crop_type, self.crop_size = crop_type, tuple(crop_size)

    def crop_hw(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        ch, cw = self.crop_size
        if self.crop_type == "relative":
            return int(height * ch + 0.5), int(width * cw + 0.5)
        if self.crop_type == "relative_range":
            size = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = size + rng.random(2) * (1 - size)
            return int(height * ch + 0.5), int(width * cw + 0.5)
        if self.crop_type == "absolute":
            return min(int(ch), height), min(int(cw), width)
        low, high = int(ch), int(cw)
        return (int(rng.integers(min(height, low), min(height, high) + 1)),
                int(rng.integers(min(width, low), min(width, high) + 1)))

    def get_transform(self, height: int, width: int, rng: np.random.Generator) -> Transform | None:
        crop_h, crop_w = self.crop_hw(height, width, rng)
        y0 = int(rng.integers(height - crop_h + 1))
        x0 = int(rng.integers(width - crop_w + 1))
        return CropTransform(x0, y0, crop_w, crop_h)


@dataclass(frozen=True)
class ComposedTransform(Transform):
    transforms: tuple[Transform, ...]

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            image = t.apply_image(image)
        return image

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            mask = t.apply_mask(mask)
        return mask

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords


def apply_augmentations(augmentations: Sequence[Augmentation], image: np.ndarray,
                        rng: np.random.Generator) -> tuple[np.ndarray, ComposedTransform]:
    """Draw and apply each augmentation on the result of the previous one (as detectron2 does)."""
    applied = []
    for augmentation in augmentations:
        transform = augmentation.get_transform(image.shape[0], image.shape[1], rng)
        if transform is not None:
            image = transform.apply_image(image)
            applied.append(transform)
    return image, ComposedTransform(tuple(applied))


KNOWN_MAPPERS = ("mask_former_instance", "coco_instance_lsj")


def build_train_augmentation(cfg: Any) -> list[Augmentation]:
    """INPUT.DATASET_MAPPER_NAME as upstream's ``train_net.py`` dispatches it.

    ``coco_instance_lsj``: flip, ResizeScale(MIN_SCALE..MAX_SCALE of IMAGE_SIZE), FixedSizeCrop.
    ``mask_former_instance``: ResizeShortestEdge, optional RandomCrop, flip.
    Any other name falls back, as upstream, to detectron2's default ``DatasetMapper``:
    optional RandomCrop, ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN), flip.
    """
    inp = cfg.INPUT
    name = inp.DATASET_MAPPER_NAME
    flip = [] if inp.RANDOM_FLIP == "none" else [RandomFlip(0.5, horizontal=inp.RANDOM_FLIP == "horizontal")]
    if inp.RANDOM_FLIP not in ("none", "horizontal", "vertical"):
        raise ValueError(f"INPUT.RANDOM_FLIP {inp.RANDOM_FLIP!r}: expected none, horizontal or vertical")
    if name == "coco_instance_lsj":
        size = inp.IMAGE_SIZE
        return [*flip, ResizeScale(inp.MIN_SCALE, inp.MAX_SCALE, size, size), FixedSizeCrop((size, size))]
    resize = ResizeShortestEdge(inp.MIN_SIZE_TRAIN, inp.MAX_SIZE_TRAIN, inp.MIN_SIZE_TRAIN_SAMPLING)
    crop = [RandomCrop(inp.CROP.TYPE, inp.CROP.SIZE)] if inp.CROP.ENABLED else []
    if name == "mask_former_instance":
        if inp.get("COLOR_AUG_SSD", False):
            logger.warning("INPUT.COLOR_AUG_SSD is not implemented here and is ignored")
        if inp.get("SIZE_DIVISIBILITY", -1) > 0:
            logger.warning("INPUT.SIZE_DIVISIBILITY (fixed-size padding) is ignored: the model pads "
                           "each batch to MODEL.MASK_FORMER.SIZE_DIVISIBILITY itself")
        return [resize, *crop, *flip]
    if "lsj" in str(name).lower():
        logger.warning("INPUT.DATASET_MAPPER_NAME %r is not upstream's 'coco_instance_lsj': like "
                       "upstream, it trains with detectron2's default mapper (ResizeShortestEdge "
                       "%s max %d + flip), not LSJ", name, list(inp.MIN_SIZE_TRAIN), inp.MAX_SIZE_TRAIN)
    elif name not in KNOWN_MAPPERS:
        logger.info("INPUT.DATASET_MAPPER_NAME %r: detectron2's default mapper (ResizeShortestEdge + flip)",
                    name)
    return [*crop, resize, *flip]
