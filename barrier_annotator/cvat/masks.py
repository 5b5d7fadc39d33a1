"""Pixel encodings of one instance mask, as CVAT's three mask formats want them.

Everything works on a mask *crop* plus its box ``(x0, y0, x1, y1)`` with exclusive ``x1, y1``
(what ``Instances.mask_crop`` returns), so a full-frame mask is never scanned per instance.

- detector ``mask`` field (Nuclio): raw 0/1 pixels of the crop, row by row, then the INCLUSIVE
  box ``[xtl, ytl, xbr, ybr]``. CVAT does not check the length; a wrong one garbles the mask.
- CVAT RLE (XML ``rle`` attribute, cvat-sdk / interactor ``points``): run lengths row by row
  inside the box, starting with a background run (0 when the first pixel is set).
  SDK/interactor ``points`` are those runs followed by the inclusive box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mask2former.structures import mask_box

Box = tuple[int, int, int, int]
"""``(x0, y0, x1, y1)`` in frame pixels, exclusive ``x1, y1``: ``mask[y0:y1, x0:x1]`` is the crop."""


def check_crop(mask_crop: np.ndarray, box: Sequence[int]) -> tuple[np.ndarray, Box]:
    """Validate a crop against its box; a mismatch here would silently garble CVAT's mask."""
    crop = np.asarray(mask_crop)
    if crop.ndim != 2:
        raise ValueError(f"mask crop must be 2-D, got shape {crop.shape}")
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box!r} is empty or negative: drop empty masks before encoding")
    if crop.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"mask crop shape {crop.shape} does not match box {box!r} "
                         f"(expected {(y1 - y0, x1 - x0)})")
    return crop.astype(bool, copy=False), (x0, y0, x1, y1)


def tight_crop(mask: np.ndarray) -> tuple[np.ndarray, Box] | None:
    """Crop a full-frame mask to its tight box; None when it has no pixel set."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    box = mask_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return mask[y0:y1, x0:x1], box


def paste_crop(mask_crop: np.ndarray, box: Sequence[int], height: int, width: int) -> np.ndarray:
    """Place a crop into an empty ``height x width`` frame (training and tests want full frames)."""
    crop, (x0, y0, x1, y1) = check_crop(mask_crop, box)
    if x1 > width or y1 > height:
        raise ValueError(f"box {box!r} exceeds the {width}x{height} frame")
    frame = np.zeros((height, width), dtype=bool)
    frame[y0:y1, x0:x1] = crop
    return frame


# --- detector `mask` field -------------------------------------------------------------------

def encode_detector_mask(mask_crop: np.ndarray, box: Sequence[int]) -> list[int]:
    """Nuclio detector ``mask`` value: crop pixels as 0/1 then the inclusive box.

    CVAT's server expects raw pixels here, not RLE; plain ints keep it JSON-ready.
    """
    crop, (x0, y0, x1, y1) = check_crop(mask_crop, box)
    pixels: list[int] = crop.astype(np.uint8).ravel().tolist()
    return [*pixels, x0, y0, x1 - 1, y1 - 1]


def decode_detector_mask(values: Sequence[int]) -> tuple[np.ndarray, Box]:
    """Inverse of :func:`encode_detector_mask`; checks the length CVAT itself never checks."""
    if len(values) < 5:
        raise ValueError("detector mask needs at least one pixel and a box")
    xtl, ytl, xbr, ybr = (int(v) for v in values[-4:])
    width, height = xbr - xtl + 1, ybr - ytl + 1
    if xtl < 0 or ytl < 0 or width <= 0 or height <= 0:
        raise ValueError(f"invalid inclusive box {[xtl, ytl, xbr, ybr]}")
    pixels = np.asarray(values[:-4])
    if pixels.size != width * height:
        raise ValueError(f"detector mask has {pixels.size} pixels, box needs {width * height}")
    if not np.isin(pixels, (0, 1)).all():
        raise ValueError("detector mask pixels must be 0 or 1")
    return pixels.reshape(height, width).astype(bool), (xtl, ytl, xbr + 1, ybr + 1)


# --- CVAT run-length encoding ------------------------------------------------------------------

def encode_rle(mask_crop: np.ndarray) -> list[int]:
    """CVAT run lengths of a crop, row by row, background run first (0 if the first pixel is set)."""
    flat = np.asarray(mask_crop, dtype=bool).ravel()
    if flat.size == 0:
        raise ValueError("cannot run-length encode an empty crop")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(edges)
    if flat[0]:
        runs = np.concatenate(([0], runs))
    return runs.tolist()


def decode_rle(counts: Sequence[int], width: int, height: int) -> np.ndarray:
    """Crop of ``height x width`` from CVAT run lengths; refuses anything that is not exact."""
    if width <= 0 or height <= 0:
        raise ValueError(f"RLE box must be positive, got {width}x{height}")
    runs = np.asarray(counts)
    if runs.ndim != 1 or runs.size == 0:
        raise ValueError("RLE must be a non-empty list of run lengths")
    if runs.dtype.kind == "f":
        if not np.all(np.isfinite(runs)) or not np.all(runs == np.round(runs)):
            raise ValueError("RLE run lengths must be integers")
        runs = runs.astype(np.int64)
    elif runs.dtype.kind not in "iu":
        raise ValueError(f"RLE run lengths must be integers, got {runs.dtype}")
    if (runs < 0).any():
        raise ValueError("RLE run lengths must be non-negative")
    total = int(runs.sum())
    if total != width * height:
        raise ValueError(f"RLE covers {total} pixels, box {width}x{height} has {width * height}")
    values = (np.arange(runs.size) % 2).astype(bool)
    return np.repeat(values, runs).reshape(height, width)


# --- cvat-sdk shapes and interactor `points` ----------------------------------------------------

def encode_sdk_mask(mask_crop: np.ndarray, box: Sequence[int]) -> list[int]:
    """``points`` of a cvat-sdk / interactor mask shape: CVAT RLE then the inclusive box.

    The same run lengths as the XML ``rle`` (what ``cvat_sdk.masks.encode_mask`` computes; the
    tests hold the two equal), so the functions need no cvat-sdk, and a Nuclio image ships none.
    """
    crop, box = check_crop(mask_crop, box)
    return sdk_mask_points(encode_rle(crop), box)


def sdk_mask_points(counts: Sequence[int], box: Sequence[int]) -> list[int]:
    """``points`` of an SDK mask shape from a CVAT RLE already computed (e.g. read from an XML
    ``<mask>``) and its exclusive box."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return [*(int(v) for v in counts), x0, y0, x1 - 1, y1 - 1]


def decode_sdk_mask(points: Sequence[int]) -> tuple[np.ndarray, Box]:
    """Crop and exclusive box from SDK / interactor ``points`` (RLE + inclusive box)."""
    if len(points) < 5:
        raise ValueError("mask points need at least one run and a box")
    xtl, ytl, xbr, ybr = (int(v) for v in points[-4:])
    if xtl < 0 or ytl < 0 or xbr < xtl or ybr < ytl:
        raise ValueError(f"invalid inclusive box {[xtl, ytl, xbr, ybr]}")
    crop = decode_rle(list(points[:-4]), xbr - xtl + 1, ybr - ytl + 1)
    return crop, (xtl, ytl, xbr + 1, ybr + 1)
