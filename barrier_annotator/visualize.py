"""Overlay pictures of instances, for people checking predictions (not for CVAT)."""

from __future__ import annotations

import cv2
import numpy as np

from mask2former.structures import Instances

# One fixed colour per barrier class (RGB), then a repeating palette for other models.
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 190, 0), (0, 130, 200), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 150, 190), (0, 128, 128),
]


def class_color(class_id: int) -> tuple[int, int, int]:
    return _PALETTE[class_id % len(_PALETTE)]


def draw_instances(image: np.ndarray, instances: Instances, *, alpha: float = 0.45) -> np.ndarray:
    """RGB image with each mask tinted in its class colour, outlined, and labelled with its score."""
    # One colour layer (inside each instance's box: a batch labelling run draws every frame), then
    # one blend: where masks overlap, the higher-scoring instance's colour shows.
    image = np.ascontiguousarray(image, dtype=np.uint8)  # OpenCV wants plain uint8 arrays
    tint = image.copy()
    covered = np.zeros(image.shape[:2], dtype=bool)
    for index in reversed(range(len(instances))):
        crop, (x0, y0, x1, y1) = instances.mask_crop(index)
        if crop.size == 0:
            continue
        tint[y0:y1, x0:x1][crop] = class_color(int(instances.class_ids[index]))
        covered[y0:y1, x0:x1] |= crop
    canvas = image.copy()
    np.copyto(canvas, cv2.addWeighted(image, 1 - alpha, tint, alpha, 0), where=covered[:, :, None])
    scale = max(0.35, min(canvas.shape[:2]) / 900)
    thickness = max(1, round(scale * 2))
    for index in range(len(instances)):
        color = class_color(int(instances.class_ids[index]))
        crop, (x0, y0, _, _) = instances.mask_crop(index)
        if crop.size == 0:
            continue
        contours, _ = cv2.findContours(np.pad(crop.astype(np.uint8), 1), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE, offset=(x0 - 1, y0 - 1))
        cv2.drawContours(canvas, contours, -1, color, thickness)
        x0, y0 = int(instances.boxes[index][0]), int(instances.boxes[index][1])
        text = f"{instances.labels[index]} {instances.scores[index]:.2f}"
        (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y0 = max(y0, height + baseline)
        cv2.rectangle(canvas, (x0, y0 - height - baseline), (x0 + width, y0), color, -1)
        cv2.putText(canvas, text, (x0, y0 - baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


def save_rgb(path: str, image: np.ndarray) -> None:
    """Write an RGB array (PNG/JPEG by extension); raises if OpenCV cannot write it."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1])):
        raise OSError(f"could not write image {path}")
