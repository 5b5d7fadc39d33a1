"""Mask <-> polygon, for CVAT's "Convert masks to polygons" and for polygon labels.

Coordinate convention: a vertex ``(x, y)`` is the CENTRE of pixel column ``x``, row ``y`` —
the convention of ``cv2.findContours`` and ``cv2.fillPoly``. The outline runs through the
centres of the mask's boundary pixels, so ``polygon_to_mask(mask_to_polygon(m))`` gives back
``m`` up to the simplification (``epsilon``) instead of growing or shrinking it by a pixel,
which matters for 3-6 px wide barrier rails. Vertices stay inside the frame
(``0..width-1``), so CVAT never has to clip them.

Rasterisers with the pixel-AREA convention (pixel ``x`` covers ``[x, x+1)``: pycocotools,
hence Datumaro's and CVAT's polygon-to-mask exports) draw such a polygon about one pixel
thinner; polygons drawn by hand in CVAT's canvas follow that area convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .masks import check_crop

DEFAULT_EPSILON = 1.0
"""Douglas-Peucker tolerance in pixels: turns the stair steps of slanted edges into straight
edges (a rotated rail becomes ~5 vertices instead of ~100)."""

MIN_FIDELITY = 0.93
"""IoU the simplified polygon must keep with the unsimplified contour, else the tolerance is
halved (down to the raw contour). On 3 px rails a 1 px tolerance alone can drop IoU to ~0.84."""

_SUBPIXEL_BITS = 8


def mask_to_polygon(
    mask_crop: np.ndarray,
    box: Sequence[int],
    epsilon: float = DEFAULT_EPSILON,
    min_fidelity: float = MIN_FIDELITY,
) -> list[float] | None:
    """Largest outer contour of a crop as flat frame coordinates ``[x0, y0, x1, y1, ...]``.

    Returns None when there is no polygon CVAT would accept and draw (empty mask, a single
    pixel, a straight 1-pixel-wide line; a bent one gives a sliver): one invalid item fails
    CVAT's whole frame, so callers drop the instance instead. Simplification tries
    ``epsilon``, ``epsilon / 2``, ``epsilon / 4`` and finally the raw contour, taking the first
    that keeps ``min_fidelity``.
    """
    crop, (x0, y0, _, _) = check_crop(mask_crop, box)
    if not crop.any():
        return None
    # A 1-px zero border makes shapes touching the crop edge trace like any other.
    padded = np.pad(crop.astype(np.uint8), 1)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    reference = np.zeros_like(padded)
    cv2.fillPoly(reference, [contour], 1)
    for tolerance in (epsilon, epsilon / 2, epsilon / 4, 0.0):
        if tolerance > 0:
            points = _clean(cv2.approxPolyDP(contour, tolerance, True).reshape(-1, 2))
            if points is None or _iou(points, reference) < min_fidelity:
                continue
        else:
            points = _clean(contour.reshape(-1, 2))
            if points is None:
                return None
        points = points + np.array([x0 - 1, y0 - 1])
        return points.astype(float).ravel().tolist()
    return None


def _iou(points: np.ndarray, reference: np.ndarray) -> float:
    raster = np.zeros_like(reference)
    cv2.fillPoly(raster, [points.astype(np.int32)], 1)
    union = np.count_nonzero(raster | reference)
    return np.count_nonzero(raster & reference) / union if union else 0.0


def _clean(points: np.ndarray) -> np.ndarray | None:
    """Drop repeated vertices; None unless at least 3 distinct, non-collinear ones remain."""
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    points = points[keep] if keep.any() else points[:1]
    if len(points) < 3 or len(np.unique(points, axis=0)) < 3:
        return None
    if cv2.contourArea(points.astype(np.float32)) <= 0:
        return None
    return points


def polygon_to_mask(points: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterise flat polygon points into a ``height x width`` bool mask (pixel-centre vertices).

    Fractional vertices (CVAT stores 2 decimals) are kept with 1/256 px precision.
    """
    coords = np.asarray(points, dtype=np.float64)
    if coords.ndim != 1 or coords.size < 6 or coords.size % 2:
        raise ValueError(f"a polygon needs an even number (>= 6) of coordinates, got {coords.size}")
    if not np.all(np.isfinite(coords)):
        raise ValueError("polygon coordinates must be finite")
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    fixed = np.round(coords.reshape(-1, 2) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return canvas.astype(bool)
