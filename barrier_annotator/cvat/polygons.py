"""Mask <-> polygon, for CVAT's "Convert masks to polygons", polygon labels and COCO polygons.

One convention for the whole product, the one CVAT, Datumaro and pycocotools rasterise with:
pixel ``(x, y)`` covers the square ``[x, x+1) x [y, y+1)``, so polygon vertices lie on pixel
CORNERS and a mask's outline runs along pixel EDGES. A rectangle of pixels ``x0..x1-1`` is the
polygon ``x0,y0  x1,y0  x1,y1  x0,y1`` (vertices up to ``width``/``height`` inclusive).
:func:`mask_to_polygon` traces that outline and :func:`polygon_to_mask` rasterises with
pycocotools, so an unsimplified polygon gives back exactly the mask it came from (holes filled)
and a polygon from our mask goes into CVAT and comes back without a 1-pixel shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .masks import check_crop

DEFAULT_EPSILON = 1.0
"""Douglas-Peucker tolerance in pixels: turns the stair steps of slanted edges into straight
edges (a rotated rail becomes a handful of vertices instead of hundreds)."""

MIN_FIDELITY = 0.93
"""IoU the simplified polygon must keep with the exact outline, else the tolerance is halved
(down to the exact outline). On 3 px rails a 1 px tolerance alone can cost more than that."""


def _edge_contours(crop: np.ndarray) -> list[np.ndarray]:
    """Outer outlines of every 8-connected component along pixel edges, as int (N, 2) corner arrays.

    Tracing a 2x upsampled mask puts each traced pixel centre next to one original pixel corner:
    an even upsampled coordinate is a pixel's left/top half (its corner is ``u / 2``), an odd one
    its right/bottom half (``(u + 1) / 2``). A 1-px zero border lets shapes touch the crop edge.
    """
    height, width = crop.shape
    # nearest-neighbour at exactly 2x is np.repeat on both axes, at a fraction of its cost
    upsampled = cv2.resize(np.ascontiguousarray(crop).view(np.uint8), (2 * width, 2 * height),
                           interpolation=cv2.INTER_NEAREST)
    upsampled = cv2.copyMakeBorder(upsampled, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlines = []
    for contour in contours:
        points = contour.reshape(-1, 2).astype(np.int64) - 1
        outlines.append((points + (points & 1)) // 2)
    return outlines


def _area(points: np.ndarray) -> float:
    return abs(cv2.contourArea(points.astype(np.float32)))


def _clean(points: np.ndarray) -> np.ndarray | None:
    """Drop repeated vertices; None unless at least 3 distinct vertices enclose some area."""
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    points = points[keep] if keep.any() else points[:1]
    if len(points) < 3 or len(np.unique(points, axis=0)) < 3 or _area(points) <= 0:
        return None
    return points


def _polygon_rle(points: np.ndarray, height: int, width: int) -> dict:
    return mask_util.frPyObjects([np.asarray(points, dtype=np.float64).ravel().tolist()], height, width)[0]


def _simplify(outline: np.ndarray, height: int, width: int, epsilon: float, min_fidelity: float) -> np.ndarray:
    """The coarsest of ``epsilon``, ``epsilon/2``, ``epsilon/4`` keeping ``min_fidelity`` IoU, else the outline.

    The IoU is computed on pycocotools run-length encodings: the same rasterisation and the same
    number as on dense masks, without decoding a rail's box-sized raster for every candidate.
    """
    if epsilon <= 0:
        return outline
    reference = _polygon_rle(outline, height, width)
    for tolerance in (epsilon, epsilon / 2, epsilon / 4):
        points = _clean(cv2.approxPolyDP(outline.reshape(-1, 1, 2).astype(np.int32), tolerance, True).reshape(-1, 2))
        if points is None:
            continue
        if mask_util.iou([_polygon_rle(points, height, width)], [reference], [0])[0, 0] >= min_fidelity:
            return points
    return outline


def mask_to_polygons(
    mask_crop: np.ndarray,
    box: Sequence[int],
    epsilon: float = DEFAULT_EPSILON,
    min_fidelity: float = MIN_FIDELITY,
) -> list[list[float]]:
    """Every connected component's outer outline, largest first, as flat frame coordinates.

    ``epsilon=0`` keeps the exact pixel-edge outlines (what COCO polygon exports want); holes are
    not represented (CVAT polygons have none).
    """
    crop, (x0, y0, _, _) = check_crop(mask_crop, box)
    if not crop.any():
        return []
    height, width = crop.shape
    outlines = sorted(_edge_contours(crop), key=lambda c: (-_area(c), -len(c)))
    polygons = []
    for outline in outlines:
        points = _simplify(outline, height, width, epsilon, min_fidelity)
        points = _clean(points)
        if points is not None:
            polygons.append((points + np.array([x0, y0])).astype(float).ravel().tolist())
    return polygons


MIN_PIECE_AREA = 16.0
"""Pieces of an instance smaller than this (square pixels, the area the piece's outline encloses) are
dropped when they are not the instance's largest piece. See :func:`instance_polygons`."""

MIN_PIECE_FRACTION = 0.01
"""... and so are pieces under this fraction of the instance's pixels (speckle around a big rail)."""


def instance_polygons(
    mask_crop: np.ndarray,
    box: Sequence[int],
    epsilon: float = DEFAULT_EPSILON,
    min_fidelity: float = MIN_FIDELITY,
) -> list[list[float]]:
    """The product's one rule for writing an instance as CVAT polygons (``barrier-label
    --polygons``, task labels of type "polygon", the cvat-sdk function with polygons).

    CVAT polygons have one outline each, so an instance split into pieces (a rail cut by a post)
    needs several; the writer gives them one ``group_id`` so that CVAT, Datumaro and the training
    loader read them back as one object. Every 8-connected piece becomes one polygon (its outer
    outline, simplified as :func:`mask_to_polygons` does, largest first) except slivers: a piece
    is dropped when it encloses less than ``max(MIN_PIECE_AREA, MIN_PIECE_FRACTION x instance
    pixels)`` and is not the largest piece, so no instance is ever dropped and one instance never
    turns into a cloud of specks. Holes are filled (CVAT polygons have none). Empty mask: ``[]``.
    """
    crop, (x0, y0, _, _) = check_crop(mask_crop, box)
    pixels = int(np.count_nonzero(crop))
    if not pixels:
        return []
    height, width = crop.shape
    outlines = sorted(_edge_contours(crop), key=lambda c: (-_area(c), -len(c)))
    minimum = max(MIN_PIECE_AREA, MIN_PIECE_FRACTION * pixels)
    polygons = []
    for index, outline in enumerate(outlines):
        if index and _area(outline) < minimum:
            break  # sorted by area: every later piece is smaller still
        points = _clean(_simplify(outline, height, width, epsilon, min_fidelity))
        if points is not None:
            polygons.append((points + np.array([x0, y0])).astype(float).ravel().tolist())
    return polygons


def _largest_component(crop: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The largest 8-connected component (by pixels), cropped to its box, and that box's offset.

    Tracing only it keeps speckled masks and big, thin crops cheap. A crop whose pixels have a
    single boundary (one 8-connected piece, no hole: most rails and posts) is returned as it is,
    found by a boundary trace that costs a small fraction of the labelling.
    """
    boundaries, _ = cv2.findContours(crop.view(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    if len(boundaries) <= 1:
        return crop, (0, 0)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(crop.view(np.uint8), connectivity=8)
    if count <= 2:
        return crop, (0, 0)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[best, :4])
    return labels[y : y + h, x : x + w] == best, (x, y)


def mask_to_polygon(
    mask_crop: np.ndarray,
    box: Sequence[int],
    epsilon: float = DEFAULT_EPSILON,
    min_fidelity: float = MIN_FIDELITY,
) -> list[float] | None:
    """Largest component's outer outline as flat frame coordinates ``[x0, y0, x1, y1, ...]``.

    CVAT takes one polygon per shape. None only for an empty mask: in this convention even a
    single pixel is a valid 4-vertex polygon, so no instance has to be dropped for lack of one.
    """
    crop, (x0, y0, _, _) = check_crop(mask_crop, box)
    if not crop.any():
        return None
    component, (dx, dy) = _largest_component(np.ascontiguousarray(crop))
    height, width = component.shape
    outline = max(_edge_contours(component), key=lambda c: (_area(c), len(c)))
    points = _clean(_simplify(outline, height, width, epsilon, min_fidelity))
    if points is None:  # cannot happen for a pixel-edge outline; kept as the last guard
        return None
    return (points + np.array([x0 + dx, y0 + dy])).astype(float).ravel().tolist()


def _check_polygon(points: Sequence[float]) -> np.ndarray:
    coords = np.asarray(points, dtype=np.float64)
    # pycocotools reads a 4-number list as a box, not a polygon: refuse it here.
    if coords.ndim != 1 or coords.size < 6 or coords.size % 2:
        raise ValueError(f"a polygon needs an even number (>= 6) of coordinates, got {coords.size}")
    if not np.all(np.isfinite(coords)):
        raise ValueError("polygon coordinates must be finite")
    return coords


def polygons_to_rle(parts: Sequence[Sequence[float]], height: int, width: int) -> dict:
    """Union of polygon parts as one COCO RLE (pycocotools' rasterisation: pixel-area convention)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if not parts:
        raise ValueError("at least one polygon part is needed")
    checked = [_check_polygon(part).tolist() for part in parts]
    return mask_util.merge(mask_util.frPyObjects(checked, height, width))


def polygons_to_mask(parts: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise the union of polygon parts into a ``height x width`` bool mask."""
    return mask_util.decode(polygons_to_rle(parts, height, width)).astype(bool)


def polygon_to_mask(points: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterise one flat polygon ``[x0, y0, x1, y1, ...]`` as CVAT, Datumaro and pycocotools do."""
    return polygons_to_mask([points], height, width)
