"""Shapes CVAT expects back from a function: Nuclio detector and interactor items, cvat-sdk shapes.

Detector items carry ``confidence`` as a string, as CVAT's own functions send it; the server
ignores it (shapes are stored with score 1), so the function applies the threshold itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .masks import check_crop, encode_detector_mask, encode_sdk_mask
from .polygons import DEFAULT_EPSILON, instance_polygons, mask_to_polygon

_PIXEL_WORD = np.dtype("<u2")
_DIGIT_AND_COMMA = _PIXEL_WORD.type(ord("0") | ord(",") << 8)  # the bytes "0," read as one word


def _attribute_list(attributes: Mapping[str, Any] | None) -> list[dict[str, str]]:
    # CVAT wants attribute values as strings.
    return [{"name": str(name), "value": str(value)} for name, value in (attributes or {}).items()]


def format_confidence(score: float) -> str:
    """``"0.8123"``: four decimals are plenty for a value CVAT only displays."""
    return str(round(float(score), 4))


def _detector_fields(
    label: str,
    mask_crop: np.ndarray,
    box: Sequence[int],
    score: float | None,
    attributes: Mapping[str, Any] | None,
    epsilon: float,
) -> dict[str, Any] | None:
    points = mask_to_polygon(mask_crop, box, epsilon)
    if points is None:
        return None
    item: dict[str, Any] = {"label": label, "type": "mask", "points": points}
    if score is not None:
        item["confidence"] = format_confidence(score)
    if attributes:
        item["attributes"] = _attribute_list(attributes)
    return item


def detector_shape(
    label: str,
    mask_crop: np.ndarray,
    box: Sequence[int],
    *,
    score: float | None = None,
    attributes: Mapping[str, Any] | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> dict[str, Any] | None:
    """One detector response item: raw-pixel ``mask`` plus polygon ``points``.

    Both are always sent because CVAT converts to a polygon ("Convert masks to polygons") only
    from ``points``. Returns None when there is no valid polygon (an empty mask): one malformed
    item fails the frame (and a whole batch job), so such instances are dropped, never sent.
    """
    item = _detector_fields(label, mask_crop, box, score, attributes, epsilon)
    if item is not None:
        item["mask"] = encode_detector_mask(mask_crop, box)
    return item


_ItemParts = tuple[bytes, np.ndarray, bytes]
"""Text before the pixels, the bool crop, text after them: one item of a detector response."""


def _write_json(parts: Sequence[_ItemParts], opening: bytes = b"", closing: bytes = b"") -> str:
    """``opening`` + the items joined by commas + ``closing``, pixels written as ``0,``/``1,``.

    One buffer for the whole text: the pixels of each crop are written as 16-bit words straight
    from the frame's mask (no copy of the crop, no Python object per pixel) and the text is
    decoded once. CVAT's format costs two bytes a pixel; this writes them at memory speed.
    """
    total = len(opening) + len(closing) + max(len(parts) - 1, 0)
    total += sum(len(head) + 2 * crop.size + len(tail) for head, crop, tail in parts)
    text = np.empty(total, dtype=np.uint8)
    position = 0

    def put(chunk: bytes) -> None:
        nonlocal position
        text[position : position + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        position += len(chunk)

    put(opening)
    for index, (head, crop, tail) in enumerate(parts):
        if index:
            put(b",")
        put(head)
        # each pixel is the two bytes "0," or "1,": one little-endian 16-bit word per pixel
        pixels = text[position : position + 2 * crop.size].view(_PIXEL_WORD).reshape(crop.shape)
        pixels[...] = crop.view(np.uint8)
        pixels += _DIGIT_AND_COMMA
        position += 2 * crop.size
        put(tail)
    put(closing)
    return str(memoryview(text), "ascii")


def _detector_parts(
    label: str,
    mask_crop: np.ndarray,
    box: Sequence[int],
    score: float | None,
    attributes: Mapping[str, Any] | None,
    epsilon: float,
) -> _ItemParts | None:
    item = _detector_fields(label, mask_crop, box, score, attributes, epsilon)
    if item is None:
        return None
    crop, (x0, y0, x1, y1) = check_crop(mask_crop, box)
    head = json.dumps(item, separators=(",", ":"))[:-1] + ',"mask":['
    return head.encode("ascii"), crop, f"{x0},{y0},{x1 - 1},{y1 - 1}]}}".encode("ascii")


def detector_mask_json(mask_crop: np.ndarray, box: Sequence[int]) -> str:
    """JSON text of :func:`encode_detector_mask`'s list, written straight from the pixels.

    A rail's box holds hundreds of thousands of pixels; building a Python list and running
    ``json.dumps`` on it costs ~50x more than this.
    """
    crop, (x0, y0, x1, y1) = check_crop(mask_crop, box)
    return _write_json([(b"[", crop, f"{x0},{y0},{x1 - 1},{y1 - 1}]".encode("ascii"))])


def detector_shape_json(
    label: str,
    mask_crop: np.ndarray,
    box: Sequence[int],
    *,
    score: float | None = None,
    attributes: Mapping[str, Any] | None = None,
    epsilon: float = DEFAULT_EPSILON,
) -> str | None:
    """:func:`detector_shape` already serialised (compact JSON), for response bodies."""
    parts = _detector_parts(label, mask_crop, box, score, attributes, epsilon)
    return None if parts is None else _write_json([parts])


def detector_response_json(
    shapes: Iterable[tuple[str, np.ndarray, Sequence[int], float | None]],
    *,
    epsilon: float = DEFAULT_EPSILON,
) -> str:
    """A whole detector response body: the JSON array of :func:`detector_shape` items of
    ``(label, mask_crop, box, score)`` shapes, instances without a polygon (empty) left out.

    Written in one buffer: at 1080p an answer is megabytes of pixel digits, and joining
    per-item strings would copy them several times over.
    """
    parts = [_detector_parts(label, crop, box, score, None, epsilon) for label, crop, box, score in shapes]
    return _write_json([p for p in parts if p is not None], b"[", b"]")


def interactor_shape(
    mask_crop: np.ndarray,
    box: Sequence[int],
    *,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One item of an interactor's ``{"shapes": [...]}`` response (CVAT >= 2.60).

    Interactors answer with CVAT RLE + inclusive box in ``points`` (the cvat-sdk encoding),
    not the raw pixels detectors send.
    """
    return {
        "type": "mask",
        "points": encode_sdk_mask(mask_crop, box),
        "attributes": _attribute_list(attributes),
    }


def sdk_instance_shapes(label_id: int, mask_crop: np.ndarray, box: Sequence[int], *, as_polygons: bool = False,
                        group: int | None = None) -> list[Any]:
    """The ``cvat_sdk.auto_annotation`` shapes of one instance: one ``mask``, or its polygons.

    Polygons follow :func:`~barrier_annotator.cvat.polygons.instance_polygons` (one per piece, slivers
    dropped), the rule ``barrier-label`` writes by; when there are several they all carry
    ``group`` (which must then be given), so CVAT keeps them as one object. ``[]`` for an empty
    mask. ``cvat_sdk`` is imported lazily: it pulls in the whole API client, which a Nuclio worker
    never needs.
    """
    import cvat_sdk.auto_annotation as cvataa

    if not as_polygons:
        crop, _ = check_crop(mask_crop, box)
        return [cvataa.mask(int(label_id), encode_sdk_mask(mask_crop, box))] if crop.any() else []
    parts = instance_polygons(mask_crop, box)
    if len(parts) > 1 and not group:
        raise ValueError("an instance written as several polygons needs a non-zero group id")
    extra = {"group": int(group)} if len(parts) > 1 else {}
    return [cvataa.polygon(int(label_id), points, **extra) for points in parts]
