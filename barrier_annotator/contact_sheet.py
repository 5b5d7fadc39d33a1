"""One picture of several images' instances, prediction beside ground truth, to judge a model at a glance.

Each image becomes a cell: its prediction and (when given) its ground truth side by side under the
titles "prediction" / "ground truth", a caption below; cells fill a grid. Every image is scaled to
one tile width first and drawn at that size, so labels and lines read the same in every tile
whatever the source resolution; the colour legend sits once at the top, not in every tile.

    sheet = contact_sheet(images, predictions, ground_truth, captions=names, title="val set")
    save_rgb("contact_sheet.png", sheet)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw

from mask2former.structures import Instances, boxes_from_masks

from .overlay_labels import font, text_size
from .visualize import class_color, render_overlay

_BACKGROUND = (30, 30, 30)
_TEXT = (235, 235, 235)
_MUTED = (170, 170, 170)


def resize_instances(instances: Instances, size: tuple[int, int]) -> Instances:
    """``instances`` of an image resized to ``size`` (height, width); works on each mask's box only."""
    height, width = size
    old_h, old_w = instances.image_size
    sy, sx = height / max(old_h, 1), width / max(old_w, 1)
    masks = np.zeros((len(instances), height, width), dtype=bool)
    for index in range(len(instances)):
        crop, (x0, y0, x1, y1) = instances.mask_crop(index)
        if crop.size == 0:
            continue
        nx0, ny0 = min(int(x0 * sx), width - 1), min(int(y0 * sy), height - 1)
        nx1, ny1 = max(nx0 + 1, min(width, math.ceil(x1 * sx))), max(ny0 + 1, min(height, math.ceil(y1 * sy)))
        shrink = (nx1 - nx0) < crop.shape[1] or (ny1 - ny0) < crop.shape[0]
        scaled = cv2.resize(crop.astype(np.uint8) * 255, (nx1 - nx0, ny1 - ny0),
                            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        masks[index, ny0:ny1, nx0:nx1] = scaled >= (64 if shrink else 128)  # thin posts survive shrinking
    return Instances(image_size=(height, width), masks=masks, scores=instances.scores,
                     class_ids=instances.class_ids, boxes=boxes_from_masks(masks),
                     class_names=instances.class_names)


def _fit(text: str, size: int, width: int) -> str:
    """``text`` cut with an ellipsis to ``width`` px."""
    if text_size(text, size)[0] <= width:
        return text
    while text and text_size(text + "…", size)[0] > width:
        text = text[:-1]
    return text + "…" if text else ""


def _columns(cells: int, cell_w: int, cell_h: int) -> int:
    """Cells per row that make the sheet closest to square."""
    return min(range(1, cells + 1),
               key=lambda c: abs(math.log(c * cell_w / (math.ceil(cells / c) * cell_h))))


def contact_sheet(
    images: Sequence[np.ndarray],
    predictions: Sequence[Instances],
    ground_truth: Sequence[Instances] | None = None,
    *,
    captions: Sequence[str] | None = None,
    title: str | None = None,
    tile_width: int = 480,
    columns: int | None = None,
) -> np.ndarray:
    """An RGB sheet of ``images`` (RGB uint8) with their predicted, and optionally true, instances.

    ``captions`` default to the instance counts; ``columns`` (cells per row) defaults to the
    count that makes the sheet about square. Raises ValueError on mismatched inputs.
    """
    count = len(images)
    if count == 0:
        raise ValueError("a contact sheet needs at least one image")
    if len(predictions) != count or (ground_truth is not None and len(ground_truth) != count):
        raise ValueError(f"{count} images but {len(predictions)} predictions and "
                         f"{'no' if ground_truth is None else len(ground_truth)} ground truths")
    if captions is not None and len(captions) != count:
        raise ValueError(f"{count} images but {len(captions)} captions")
    if tile_width < 16:
        raise ValueError(f"tile_width must be at least 16 px, got {tile_width}")
    text = max(11, round(tile_width / 34))
    heading = round(text * 1.4)
    gap, margin, line = max(2, text // 4), text, text_size("Ag", text)[1]
    aspects = sorted(image.shape[0] / max(image.shape[1], 1) for image in images)
    tile_h = max(1, round(tile_width * aspects[len(aspects) // 2]))  # the usual shape fills its tile
    sides = 1 if ground_truth is None else 2
    cell_w, cell_h = sides * tile_width + (sides - 1) * gap, line + tile_h + gap + line
    per_row = columns or _columns(count, cell_w, cell_h)
    rows = math.ceil(count / per_row)
    header = (text_size("Ag", heading)[1] + gap if title else 0) + line
    sheet = np.full((margin + header + rows * (margin + cell_h) + margin // 2,
                     margin + per_row * (cell_w + margin), 3), _BACKGROUND, dtype=np.uint8)
    texts: list[tuple[tuple[int, int], str, int, tuple[int, int, int]]] = []
    for index, image in enumerate(images):
        left = margin + (index % per_row) * (cell_w + margin)
        top = margin + header + margin + (index // per_row) * (cell_h + margin)
        panels = [(predictions[index], "prediction", True)]
        if ground_truth is not None:
            panels.append((ground_truth[index], "ground truth", False))
        scale = min(tile_width / max(image.shape[1], 1), tile_h / max(image.shape[0], 1))
        size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        scaled = cv2.resize(np.ascontiguousarray(image), size[::-1],
                            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        for side, (instances, name, scores) in enumerate(panels):
            x = left + side * (tile_width + gap)
            overlay = render_overlay(scaled, resize_instances(instances, size), names=False,
                                     show_scores=scores, legend=False, font_px=text).image
            y, dx = top + line + (tile_h - size[0]) // 2, (tile_width - size[1]) // 2
            sheet[y:y + size[0], x + dx:x + dx + size[1]] = overlay
            if sides > 1:
                texts.append(((x, top), name, text, _MUTED))
        caption = captions[index] if captions is not None else (
            f"{len(predictions[index])} predicted" + ("" if ground_truth is None
                                                      else f", {len(ground_truth[index])} true"))
        texts.append(((left, top + line + tile_h + gap), _fit(caption, text, cell_w), text, _TEXT))
    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    y = margin
    if title:
        draw.text((margin, y), _fit(title, heading, sheet.shape[1] - 2 * margin), font=font(heading), fill=_TEXT)
        y += text_size("Ag", heading)[1] + gap
    x = margin
    for class_id, name in enumerate(predictions[0].class_names):  # the legend: every class, once
        draw.rectangle((x, y + line // 5, x + line - line // 5 * 2, y + line - line // 5), fill=class_color(class_id))
        x += line
        draw.text((x, y), name, font=font(text), fill=_TEXT)
        x += text_size(name, text)[0] + text
    for (x, y), string, size, fill in texts:
        draw.text((x, y), string, font=font(size), fill=fill)
    return np.asarray(canvas).copy()
