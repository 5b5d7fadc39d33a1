"""Which predicted instance an interaction (clicks and an optional box) asks for.

The model is a detector, not a click-conditioned segmenter: the interactor runs it once and
picks the instance that best agrees with the prompt. The rule, in order:

1. A click at canvas point ``(x, y)`` lands on pixel ``(floor(x), floor(y))`` (pixel-area
   convention, clamped into the frame).
2. An instance is a candidate only if NO negative click lands on one of its pixels, and, when a
   box is given, at least ``min_box_coverage`` of its pixels (centres) lie inside the box.
3. A positive click *hits* an instance when a mask pixel lies within ``click_radius`` pixels of
   it (Chebyshev distance): a click meant for a 3-px rail may miss it by a pixel. With positive
   clicks, a candidate needs at least one hit.
4. Candidates are ranked by: most positive hits, then most exact hits (radius 0), then the IoU of
   the instance's box with the user's box (when given), then the model score.

No candidate -> None: the function answers ``{"shapes": []}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mask2former.structures import Instances

Point = tuple[float, float]

DEFAULT_CLICK_RADIUS = 2
DEFAULT_MIN_BOX_COVERAGE = 0.5


@dataclass(frozen=True)
class Prompt:
    positive: Sequence[Point] = ()
    negative: Sequence[Point] = ()
    box: tuple[float, float, float, float] | None = None  # (xtl, ytl, xbr, ybr), canvas coordinates


def _pixel(point: Point, height: int, width: int) -> tuple[int, int]:
    x = min(max(math.floor(point[0]), 0), width - 1)
    y = min(max(math.floor(point[1]), 0), height - 1)
    return x, y


def _hits(mask: np.ndarray, pixels: Sequence[tuple[int, int]], radius: int) -> int:
    height, width = mask.shape
    count = 0
    for x, y in pixels:
        window = mask[max(y - radius, 0): min(y + radius + 1, height), max(x - radius, 0): min(x + radius + 1, width)]
        count += bool(window.any())
    return count


def _box_coverage(mask: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Fraction of mask pixels whose centre ``(x + .5, y + .5)`` lies inside the box."""
    xtl, ytl, xbr, ybr = box
    x0, y0 = max(math.ceil(xtl - 0.5), 0), max(math.ceil(ytl - 0.5), 0)
    x1, y1 = math.floor(xbr - 0.5) + 1, math.floor(ybr - 0.5) + 1
    total = np.count_nonzero(mask)
    if total == 0 or x1 <= x0 or y1 <= y0:
        return 0.0
    return np.count_nonzero(mask[y0:y1, x0:x1]) / total


def _box_iou(instance_box: np.ndarray, box: tuple[float, float, float, float]) -> float:
    ax0, ay0, ax1, ay1 = (float(v) for v in instance_box)
    bx0, by0, bx1, by1 = box
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def choose_instance(
    instances: Instances,
    prompt: Prompt,
    *,
    click_radius: int = DEFAULT_CLICK_RADIUS,
    min_box_coverage: float = DEFAULT_MIN_BOX_COVERAGE,
) -> int | None:
    """Index of the instance that best agrees with ``prompt`` (rule in the module docstring), or None."""
    height, width = instances.image_size
    positive = [_pixel(p, height, width) for p in prompt.positive]
    negative = [_pixel(p, height, width) for p in prompt.negative]
    best_key: tuple[float, ...] | None = None
    best: int | None = None
    for index in range(len(instances)):
        mask = instances.masks[index]
        if any(mask[y, x] for x, y in negative):
            continue
        if prompt.box is not None and _box_coverage(mask, prompt.box) < min_box_coverage:
            continue
        hits = _hits(mask, positive, click_radius)
        if positive and hits == 0:
            continue
        key = (
            hits,
            _hits(mask, positive, 0),
            _box_iou(instances.boxes[index], prompt.box) if prompt.box is not None else 0.0,
            float(instances.scores[index]),
        )
        if best_key is None or key > best_key:
            best_key, best = key, index
    return best
