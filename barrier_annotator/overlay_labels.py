"""Where an overlay's labels and legend go, so that they do not hide what they name.

A label is tried at spots just outside its instance's mask (above and below it at three columns,
left and right of it at three rows, then as many one label farther out). Each spot is clamped into
the picture and costed by the mask pixels it would cover (its own mask's four times over) and by
its distance to the mask pixel it names; spots over a label already placed, or hiding over 30 % of
their own mask, are out. Mask cover is counted on a grid of a quarter of the text size through
integral images, so a label costs the same on a 320 px and a 48 Mpx frame. Labels that fit
nowhere are left out (the caller then draws a colour legend, :func:`place_legend`); a label
away from its mask gets a leader line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mask2former.structures import Instances

_OWN_WEIGHT = 3.0  # a label over its own mask hides what it names: costs 4x another mask's pixels
_DISTANCE_WEIGHT = 2.0  # per grid cell between a label and the mask pixel it names
_MAX_OWN_HIDDEN = 0.3  # a label may cover at most this share of its own mask's pixels
_LEGEND_BACKGROUND = (32, 32, 32)


@dataclass(frozen=True)
class TextBox:
    """A label or legend drawn on an overlay: pixel box ``[x0, x1) x [y0, y1)``."""

    x0: int
    y0: int
    x1: int
    y1: int
    text: str
    color: tuple[int, int, int]
    instance: int = -1  # index into the instances; -1 for the legend
    swatches: tuple[tuple[int, int, int], ...] = ()  # the legend's colours, one per name
    anchor: tuple[int, int] | None = None  # the mask pixel a label names (x, y)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled sans-serif at ``size`` px (no font file needed)."""
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=4096)
def text_size(text: str, size: int) -> tuple[int, int]:
    """(width, height) of a label box holding ``text``, padding included."""
    face = font(size)
    ascent, descent = face.getmetrics()
    pad = max(1, size // 5)
    return int(np.ceil(face.getlength(text))) + 2 * pad, ascent + descent + pad


class Coverage:
    """How many mask pixels a rectangle covers, counted on a grid of ``cell`` px through integrals."""

    def __init__(self, instances: Instances, cell: int) -> None:
        self.cell = cell
        height, width = instances.image_size
        self.shape = (-(-height // cell), -(-width // cell))
        grid = np.zeros(self.shape, dtype=np.uint8)
        self._own: list[tuple[int, int, np.ndarray, int]] = []
        for index in range(len(instances)):
            sub, gx, gy = self._sampled(instances, index)
            grid[gy:gy + sub.shape[0], gx:gx + sub.shape[1]] |= sub
            integral = cv2.integral(sub) if sub.size else np.zeros((1, 1), np.int32)
            self._own.append((gx, gy, integral, int(integral[-1, -1])))
        self._all = cv2.integral(grid)

    def _sampled(self, instances: Instances, index: int) -> tuple[np.ndarray, int, int]:
        """The mask at the grid points (multiples of ``cell``) inside its box, and where it starts."""
        crop, (x0, y0, _, _) = instances.mask_crop(index)
        cell = self.cell
        sub = np.ascontiguousarray(crop[(-y0) % cell::cell, (-x0) % cell::cell]).view(np.uint8)
        return sub, -(-x0 // cell), -(-y0 // cell)

    @staticmethod
    def _sum(integral: np.ndarray, gx0, gy0, gx1, gy1) -> np.ndarray:
        rows, cols = integral.shape[0] - 1, integral.shape[1] - 1
        gx0, gx1 = np.minimum(np.maximum(gx0, 0), cols), np.minimum(np.maximum(gx1, 0), cols)
        gy0, gy1 = np.minimum(np.maximum(gy0, 0), rows), np.minimum(np.maximum(gy1, 0), rows)
        return (integral[gy1, gx1] - integral[gy0, gx1] - integral[gy1, gx0] + integral[gy0, gx0]).astype(float)

    def _grid(self, rects: np.ndarray) -> tuple[np.ndarray, ...]:
        cell = self.cell
        return tuple(-(-rects[:, i] // cell) for i in range(4))

    def covered(self, rects: np.ndarray) -> np.ndarray:
        """Grid points of any mask inside each ``(x0, y0, x1, y1)`` row of ``rects``."""
        return self._sum(self._all, *self._grid(rects))

    def own(self, index: int, rects: np.ndarray) -> tuple[np.ndarray, int]:
        """Grid points of instance ``index``'s mask inside each rect, and of the whole mask."""
        gx, gy, integral, total = self._own[index]
        gx0, gy0, gx1, gy1 = self._grid(rects)
        return self._sum(integral, gx0 - gx, gy0 - gy, gx1 - gx, gy1 - gy), total


def _spots(
    crop: np.ndarray, box: tuple[int, int, int, int], width: int, height: int, gap: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners just outside the mask (above/below it at 3 columns, beside it at 3 rows,
    then as many one label farther out) and the mask pixel each one names."""
    x0, y0, x1, y1 = box
    spots, anchors = [], []
    # A sparse mask (specks, a thin diagonal) may miss all three probe lines: then the lines
    # through one of its own pixels, the middle one in reading order, are probed too.
    for fraction in (0.5, 0.15, 0.85, None):
        if fraction is None:
            if spots:
                break
            pixels = np.flatnonzero(crop)
            middle_row, middle_column = (int(v) for v in np.unravel_index(pixels[len(pixels) // 2], crop.shape))
            column = middle_column
        else:
            column = min(x1 - x0 - 1, int(fraction * (x1 - x0)))
        rows = np.flatnonzero(crop[:, column])
        if rows.size:
            x, top, bottom = x0 + column, y0 + int(rows[0]), y0 + int(rows[-1])
            for left in (x - width // 2, x - width + 1, x):
                spots += [(left, top - gap - height), (left, bottom + 1 + gap)]
                anchors += [(x, top), (x, bottom)]
        row = middle_row if fraction is None else min(y1 - y0 - 1, int(fraction * (y1 - y0)))
        cols = np.flatnonzero(crop[row])
        if cols.size:
            y, left, right = y0 + row, x0 + int(cols[0]), x0 + int(cols[-1])
            spots += [(left - gap - width, y - height // 2), (right + 1 + gap, y - height // 2)]
            anchors += [(left, y), (right, y)]
    near = np.array(spots, dtype=np.int64).reshape(-1, 2)
    anchors = np.array(anchors, dtype=np.int64).reshape(-1, 2)
    outward = np.sign(near + np.array([width, height]) // 2 - anchors)
    farther = near + outward * np.array([width // 2, height])
    return np.concatenate([near, farther]), np.concatenate([anchors, anchors])


def _distance(rects: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Pixels from each rect (exclusive ends) to its point; 0 inside."""
    dx = np.maximum(np.maximum(rects[:, 0] - points[:, 0], points[:, 0] - (rects[:, 2] - 1)), 0)
    dy = np.maximum(np.maximum(rects[:, 1] - points[:, 1], points[:, 1] - (rects[:, 3] - 1)), 0)
    return np.hypot(dx, dy)


def _overlaps(rects: np.ndarray, placed: Sequence[TextBox], margin: int) -> np.ndarray:
    if not placed:
        return np.zeros(len(rects), dtype=bool)
    other = np.array([(b.x0, b.y0, b.x1, b.y1) for b in placed])
    return ((rects[:, None, 0] < other[None, :, 2] + margin) & (other[None, :, 0] < rects[:, None, 2] + margin)
            & (rects[:, None, 1] < other[None, :, 3] + margin)
            & (other[None, :, 1] < rects[:, None, 3] + margin)).any(axis=1)


def place_labels(
    instances: Instances,
    texts: Sequence[str],
    colors: np.ndarray,
    size: int,
    coverage: Coverage,
    *,
    obstacles: Sequence[TextBox] = (),
    gap: int = 1,
    all_or_none: bool = False,
) -> tuple[list[TextBox], int]:
    """Label boxes for ``texts`` (one per instance, most confident placed first), and how many fit nowhere.

    ``all_or_none`` gives up at the first label that fits nowhere (the caller then tries shorter ones).
    """
    height, width = instances.image_size
    placed: list[TextBox] = list(obstacles)
    labels: list[TextBox] = []
    dropped = 0
    for index, text in enumerate(texts):
        w, h = text_size(text, size)
        crop, box = instances.mask_crop(index)
        if w > width or h > height or crop.size == 0:
            dropped += crop.size > 0
            if dropped and all_or_none:
                break
            continue
        corners, anchors = _spots(crop, box, w, h, gap)
        clamped = np.stack([np.clip(corners[:, 0], 0, width - w), np.clip(corners[:, 1], 0, height - h)], 1)
        rects = np.concatenate([clamped, clamped + np.array([w, h])], axis=1)
        own, own_total = coverage.own(index, rects)
        cost = (coverage.covered(rects) + _OWN_WEIGHT * own
                + _DISTANCE_WEIGHT * _distance(rects, anchors) / coverage.cell
                + 1e-3 * np.arange(len(rects)))  # ties: the first spot (above, centred)
        cost[_overlaps(rects, placed, gap) | (own > _MAX_OWN_HIDDEN * max(own_total, 1))] = np.inf
        best = int(np.argmin(cost))
        if not np.isfinite(cost[best]):
            dropped += 1
            if all_or_none:
                break
            continue
        x, y = (int(v) for v in clamped[best])
        anchor = (int(anchors[best, 0]), int(anchors[best, 1]))
        label = TextBox(x, y, x + w, y + h, text, tuple(int(c) for c in colors[index]), index, anchor=anchor)
        placed.append(label)
        labels.append(label)
    return labels, dropped


def legend_size(names: Sequence[str], size: int, across: bool) -> tuple[int, int]:
    """(width, height) of a legend with one swatch and name per entry, in a row or a column."""
    sizes = [text_size(name, size) for name in names]
    swatch = sizes[0][1] if sizes else 0
    if across:
        return sum(w + swatch for w, _ in sizes), swatch
    return max((w for w, _ in sizes), default=0) + swatch, swatch * len(sizes)


def place_legend(
    image_size: tuple[int, int],
    entries: Sequence[tuple[str, tuple[int, int, int]]],
    size: int,
    coverage: Coverage,
    *,
    margin: int = 2,
) -> TextBox | None:
    """A legend of ``(name, colour)`` entries in the corner or edge spot covering the fewest mask pixels.

    One row when it fits the width, else one column; None when it does not fit the picture.
    """
    height, width = image_size
    names = [name for name, _ in entries]
    if not names:
        return None
    separator = "\t"
    w, h = legend_size(names, size, across=True)
    if w > width - 2 * margin:
        separator = "\n"
        w, h = legend_size(names, size, across=False)
    if w > width - 2 * margin or h > height - 2 * margin:
        return None
    xs = (margin, width - margin - w, (width - w) // 2)
    ys = (margin, height - margin - h)
    rects = np.array([(x, y, x + w, y + h) for y in ys for x in xs])
    best = rects[int(np.argmin(coverage.covered(rects) + 1e-3 * np.arange(len(rects))))]
    return TextBox(*(int(v) for v in best), separator.join(names), _LEGEND_BACKGROUND,
                   swatches=tuple(color for _, color in entries))


def _ink(color: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``color``."""
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _render_label(box: TextBox, size: int) -> np.ndarray:
    patch = Image.new("RGB", (box.width, box.height), box.color)
    pad = max(1, size // 5)
    ImageDraw.Draw(patch).text((pad, pad // 2), box.text, font=font(size), fill=_ink(box.color))
    return np.asarray(patch)


def _render_legend(box: TextBox, size: int) -> np.ndarray:
    patch = Image.new("RGB", (box.width, box.height), box.color)
    draw = ImageDraw.Draw(patch)
    across = "\t" in box.text
    names = box.text.split("\t" if across else "\n")
    swatch = text_size(names[0], size)[1]
    inset, pad = max(1, swatch // 5), max(1, size // 5)
    x = y = 0
    for name, color in zip(names, box.swatches, strict=True):
        draw.rectangle((x + inset, y + inset, x + swatch - inset - 1, y + swatch - inset - 1), fill=color)
        draw.text((x + swatch + pad, y + pad // 2), name, font=font(size), fill=(235, 235, 235))
        if across:
            x += swatch + text_size(name, size)[0]
        else:
            y += swatch
    return np.asarray(patch)


def draw_text_boxes(canvas: np.ndarray, boxes: Sequence[TextBox], size: int, line_width: int = 1) -> None:
    """Paint the placed labels and legend into ``canvas`` (RGB uint8, in place).

    A label that does not touch its mask gets a leader line to the pixel it names.
    """
    for box in boxes:
        if box.anchor is None:
            continue
        x, y = box.anchor
        near = (min(max(x, box.x0), box.x1 - 1), min(max(y, box.y0), box.y1 - 1))
        if abs(near[0] - x) + abs(near[1] - y) > 2 + line_width:
            cv2.line(canvas, near, (x, y), box.color, line_width, cv2.LINE_AA)
    for box in boxes:
        patch = _render_legend(box, size) if box.swatches else _render_label(box, size)
        canvas[box.y0:box.y1, box.x0:box.x1] = patch
