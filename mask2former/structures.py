"""The one result type every caller consumes: instances of one image at its original size."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight pixel box ``(x0, y0, x1, y1)`` of a 2-D mask, exclusive ends; None when it is empty.

    Exclusive ends make ``mask[y0:y1, x0:x1]`` the crop, and match ``cvat_sdk.masks.encode_mask``.
    Rows first, then columns of those rows only: a thin rail across a 1080p frame costs one pass.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return int(cols[0]), y0, int(cols[-1]) + 1, y1


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """:func:`mask_box` of each mask as an ``(N, 4)`` int64 array; ``0, 0, 0, 0`` for an empty one."""
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    for index, mask in enumerate(masks):
        box = mask_box(mask)
        if box is not None:
            boxes[index] = box
    return boxes


@dataclass(frozen=True)
class Instances:
    """Predicted instances of one image.

    ``masks`` are boolean at the image's original resolution; ``boxes`` are derived from them
    (``[x0, y0, x1, y1]``, exclusive ends); ``class_ids`` index ``class_names`` (all classes of
    the model, in the model's order). Instances are sorted by descending score.
    """

    image_size: tuple[int, int]
    masks: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    boxes: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        count = len(self.scores)
        height, width = self.image_size
        if self.masks.shape != (count, height, width) or self.masks.dtype != np.bool_:
            raise ValueError(f"masks must be bool of shape {(count, height, width)}, got "
                             f"{self.masks.dtype} {self.masks.shape}")
        if self.class_ids.shape != (count,) or self.boxes.shape != (count, 4):
            raise ValueError("class_ids and boxes must have one row per instance")

    @classmethod
    def from_masks(
        cls,
        masks: np.ndarray,
        scores: np.ndarray,
        class_ids: np.ndarray,
        class_names: Sequence[str],
    ) -> Instances:
        masks = np.asarray(masks, dtype=bool)
        return cls(
            image_size=(int(masks.shape[1]), int(masks.shape[2])),
            masks=masks,
            scores=np.asarray(scores, dtype=np.float32),
            class_ids=np.asarray(class_ids, dtype=np.int64),
            boxes=boxes_from_masks(masks),
            class_names=tuple(class_names),
        )

    @classmethod
    def empty(cls, image_size: tuple[int, int], class_names: Sequence[str]) -> Instances:
        height, width = image_size
        return cls(
            image_size=(int(height), int(width)),
            masks=np.zeros((0, height, width), dtype=bool),
            scores=np.zeros((0,), dtype=np.float32),
            class_ids=np.zeros((0,), dtype=np.int64),
            boxes=np.zeros((0, 4), dtype=np.int64),
            class_names=tuple(class_names),
        )

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def labels(self) -> list[str]:
        """Class name of each instance."""
        return [self.class_names[i] for i in self.class_ids.tolist()]

    def select(self, keep: np.ndarray | Sequence[int]) -> Instances:
        keep = np.asarray(keep)
        return Instances(
            image_size=self.image_size,
            masks=self.masks[keep],
            scores=self.scores[keep],
            class_ids=self.class_ids[keep],
            boxes=self.boxes[keep],
            class_names=self.class_names,
        )

    def mask_crop(self, index: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The mask inside its box, and the box: encoders work on crops, not full frames."""
        x0, y0, x1, y1 = (int(v) for v in self.boxes[index])
        return self.masks[index, y0:y1, x0:x1], (x0, y0, x1, y1)
