"""Shapes CVAT expects back from a function: Nuclio detector and interactor items, cvat-sdk shapes.

Detector items carry ``confidence`` as a string, as CVAT's own functions send it; the server
ignores it (shapes are stored with score 1), so the function applies the threshold itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .masks import check_crop, encode_detector_mask, encode_sdk_mask
from .polygons import DEFAULT_EPSILON, mask_to_polygon

_ZERO, _COMMA = ord("0"), ord(",")


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


def detector_mask_json(mask_crop: np.ndarray, box: Sequence[int]) -> str:
    """JSON text of :func:`encode_detector_mask`'s list, written straight from the pixels.

    A rail's box holds hundreds of thousands of pixels; building a Python list and running
    ``json.dumps`` on it costs ~50x more than this.
    """
    crop, (x0, y0, x1, y1) = check_crop(mask_crop, box)
    text = np.empty(2 * crop.size, dtype=np.uint8)
    text[0::2] = crop.ravel().view(np.uint8) + _ZERO
    text[1::2] = _COMMA
    return f"[{text.tobytes().decode('ascii')}{x0},{y0},{x1 - 1},{y1 - 1}]"


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
    item = _detector_fields(label, mask_crop, box, score, attributes, epsilon)
    if item is None:
        return None
    head = json.dumps(item, separators=(",", ":"))
    return f'{head[:-1]},"mask":{detector_mask_json(mask_crop, box)}}}'


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


def sdk_shape(label_id: int, mask_crop: np.ndarray, box: Sequence[int], *, as_polygon: bool = False) -> Any | None:
    """A ``cvat_sdk.auto_annotation`` shape: ``mask`` (SDK RLE + box) or, for ``conv_mask_to_poly``, ``polygon``.

    None when a polygon is asked for and the mask has none (empty). ``cvat_sdk`` is imported
    lazily: it pulls in the whole API client, which a Nuclio worker never needs.
    """
    import cvat_sdk.auto_annotation as cvataa

    if as_polygon:
        points = mask_to_polygon(mask_crop, box)
        return None if points is None else cvataa.polygon(int(label_id), points)
    return cvataa.mask(int(label_id), encode_sdk_mask(mask_crop, box))
