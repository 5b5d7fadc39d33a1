"""JSON items CVAT's serverless API expects back from a detector or interactor function."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .masks import encode_detector_mask, encode_sdk_mask
from .polygons import DEFAULT_EPSILON, mask_to_polygon


def _attribute_list(attributes: Mapping[str, Any] | None) -> list[dict[str, str]]:
    # CVAT wants attribute values as strings.
    return [{"name": str(name), "value": str(value)} for name, value in (attributes or {}).items()]


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
    from ``points``. Returns None when the mask has no valid polygon: one malformed item fails
    the frame (and a whole batch job), so such instances are dropped rather than sent.
    ``score`` is informative only; CVAT ignores it, so threshold before calling.
    """
    points = mask_to_polygon(mask_crop, box, epsilon)
    if points is None:
        return None
    item: dict[str, Any] = {
        "label": label,
        "type": "mask",
        "points": points,
        "mask": encode_detector_mask(mask_crop, box),
    }
    if score is not None:
        item["confidence"] = float(score)
    if attributes:
        item["attributes"] = _attribute_list(attributes)
    return item


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
