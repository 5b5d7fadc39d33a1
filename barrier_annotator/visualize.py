"""Overlay pictures of instances, for people checking predictions (not for CVAT), at any image size.

Masks are tinted and outlined in one colour per class (Okabe-Ito: told apart with colour
blindness too); instances of a class alternate in lightness from left to right, so neighbouring
posts differ. Labels ("rail_top 0.87") sit where they hide least (:mod:`.overlay_labels`); when
they would crowd the picture, a legend names the colours and only the scores stay, and when even
those do not fit (tiny frames) the legend alone. Text and lines scale with the image. The work
grows with the instances' boxes, not the frame: the frame is copied once, never as floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mask2former.structures import Instances
from mask2former.utils import atomic_open

from .overlay_labels import Coverage, TextBox, draw_text_boxes, place_labels, place_legend, text_size

# Okabe & Ito's colour-blind-safe palette (RGB): rail_top, rail_mid, toeboard, vertical_post first.
PALETTE = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167),
    (0, 114, 178), (213, 94, 0), (240, 228, 66), (153, 153, 153),
)
_LABEL_AREA_BUDGET = 0.12  # labels may take this share of the picture, else scores only + legend


@dataclass(frozen=True)
class Overlay:
    """A drawn overlay and the label / legend boxes on it (all inside the picture)."""

    image: np.ndarray
    text_boxes: list[TextBox]


def class_color(class_id: int) -> tuple[int, int, int]:
    return PALETTE[class_id % len(PALETTE)]


def shade(color: tuple[int, int, int], variant: int) -> tuple[int, int, int]:
    """The class colour itself (0), darker (1) or lighter (2): instances of one class told apart."""
    rgb = np.array(color, dtype=float)
    rgb = (rgb, rgb * 0.6, rgb + (255 - rgb) * 0.45)[variant % 3]
    return tuple(round(float(v)) for v in rgb)


def instance_colors(instances: Instances) -> np.ndarray:
    """``(N, 3)`` uint8 colour of each instance: its class's, shaded by rank from left to right."""
    colors = np.zeros((len(instances), 3), dtype=np.uint8)
    centre_x = instances.boxes[:, 0] + instances.boxes[:, 2]
    centre_y = instances.boxes[:, 1] + instances.boxes[:, 3]
    for class_id in np.unique(instances.class_ids):
        members = np.flatnonzero(instances.class_ids == class_id)
        ordered = members[np.lexsort((centre_y[members], centre_x[members]))]
        for rank, index in enumerate(ordered):
            colors[index] = shade(class_color(int(class_id)), rank)
    return colors


def text_px(image_size: tuple[int, int]) -> int:
    """Label font size: 2.2 % of the short side (24 px at 1080p), never below a readable 11 px."""
    return max(11, round(0.022 * min(image_size)))


def line_px(image_size: tuple[int, int]) -> int:
    """Outline width: 1 px up to 600 px frames, 3 px at 1080p, in proportion beyond."""
    return max(1, round(min(image_size) / 400))


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None].repeat(3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])  # OpenCV draws on plain arrays


def _fill(canvas: np.ndarray, image: np.ndarray, instances: Instances, colors: np.ndarray, alpha: float) -> None:
    """Tint each mask's pixels (inside its box only), least confident first so the best shows on top.

    Blending with one colour is a per-channel lookup table: one ``cv2.LUT`` over the box, then a
    masked copy, both vectorised (6x faster than numpy's boolean indexing on 1080p rails).
    """
    weight = round(alpha * 256)
    levels = np.arange(256, dtype=np.uint16)[None, :, None] * (256 - weight)
    tables = ((levels + colors[:, None, :].astype(np.uint16) * weight) >> 8).astype(np.uint8)
    for index in reversed(range(len(instances))):
        crop, (x0, y0, x1, y1) = instances.mask_crop(index)
        if crop.size == 0:
            continue
        region = canvas[y0:y1, x0:x1]
        tinted = cv2.LUT(image[y0:y1, x0:x1], tables[index][None])
        written = cv2.copyTo(tinted, crop.view(np.uint8), region)
        if not np.shares_memory(written, canvas):  # OpenCV wrote a new array instead of the view
            np.copyto(region, written)


def _outline(canvas: np.ndarray, instances: Instances, colors: np.ndarray, width: int) -> None:
    """Trace every mask's borders, holes included, in its colour.

    The pixel staircase of a slanted rail is straightened first (within a third of the line
    width): smoother lines, and half the drawing time.
    """
    tolerance = max(1.0, width / 3)
    for index in reversed(range(len(instances))):
        crop, (x0, y0, _, _) = instances.mask_crop(index)
        if crop.size == 0:
            continue
        contours, _ = cv2.findContours(np.pad(crop.view(np.uint8), 1), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE,
                                       offset=(x0 - 1, y0 - 1))
        contours = [cv2.approxPolyDP(contour, tolerance, True) for contour in contours]
        cv2.drawContours(canvas, contours, -1, tuple(int(c) for c in colors[index]), width, cv2.LINE_AA)


def _fits(texts: list[str], size: int, image_size: tuple[int, int]) -> bool:
    area = sum(w * h for w, h in (text_size(text, size) for text in texts))
    return area <= _LABEL_AREA_BUDGET * image_size[0] * image_size[1]


def layout_text(
    instances: Instances,
    colors: np.ndarray,
    size: int,
    *,
    names: bool = True,
    show_scores: bool = True,
    legend: bool = True,
) -> list[TextBox]:
    """The label and legend boxes of an overlay: full labels when all fit, else legend + scores."""
    if len(instances) == 0:
        return []
    coverage = Coverage(instances, max(1, size // 4))
    scores = [f"{score:.2f}" for score in instances.scores.tolist()]
    full = [f"{name} {score}" if show_scores else name for name, score in zip(instances.labels, scores, strict=True)]
    if names and _fits(full, size, instances.image_size):
        labels, dropped = place_labels(instances, full, colors, size, coverage, all_or_none=True)
        if not dropped:
            return labels
    present = sorted(set(instances.class_ids.tolist()))
    entries = [(instances.class_names[c], class_color(c)) for c in present]
    key = place_legend(instances.image_size, entries, size, coverage) if legend else None
    boxes = [key] if key is not None else []
    if show_scores and _fits(scores, size, instances.image_size):
        boxes += place_labels(instances, scores, colors, size, coverage, obstacles=boxes)[0]
    return boxes


def render_overlay(
    image: np.ndarray,
    instances: Instances,
    *,
    alpha: float = 0.45,
    names: bool = True,
    show_scores: bool = True,
    legend: bool = True,
    font_px: int | None = None,
) -> Overlay:
    """Draw ``instances`` over a copy of ``image`` (RGB); also returns where the text went.

    ``show_scores=False`` for ground truth; ``names=False`` never writes class names on the
    picture and ``legend=False`` draws no legend, for pages that have their own (contact sheets);
    ``font_px`` overrides the size that follows the image.
    """
    image = _as_rgb(image)
    if instances.image_size != image.shape[:2]:
        raise ValueError(f"instances are for a {instances.image_size} image, the image is {image.shape[:2]}")
    canvas = image.copy()
    colors = instance_colors(instances)
    _fill(canvas, image, instances, colors, alpha)
    width = line_px(image.shape[:2])
    _outline(canvas, instances, colors, width)
    size = font_px or text_px(image.shape[:2])
    boxes = layout_text(instances, colors, size, names=names, show_scores=show_scores, legend=legend)
    draw_text_boxes(canvas, boxes, size, width)
    return Overlay(canvas, boxes)


def draw_instances(image: np.ndarray, instances: Instances, *, alpha: float = 0.45) -> np.ndarray:
    """RGB overlay of ``instances`` on ``image``: what barrier-predict and barrier-label write."""
    return render_overlay(image, instances, alpha=alpha).image


def save_rgb(path: str | Path, image: np.ndarray, *, jpeg_quality: int | None = None) -> Path:
    """Write an RGB array in the format its extension names, atomically: a killed run never leaves
    half a picture. Not fsynced (a picture lost to a power cut is drawn again). Raises OSError if
    OpenCV cannot encode it."""
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if jpeg_quality is not None else []
    ok, encoded = cv2.imencode(path.suffix.lower(), np.ascontiguousarray(image[:, :, ::-1]), params)
    if not ok:
        raise OSError(f"could not encode an image as {path.suffix or 'no format'}: {path}")
    with atomic_open(path, "wb", sync_data=False, sync_directory=False) as handle:
        handle.write(encoded.tobytes())
    return path
