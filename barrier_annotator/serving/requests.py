"""Validate CVAT's serverless request bodies before any model work: every refusal is a
:class:`RequestError` carrying the HTTP status and a message a person can act on.

Statuses: 400 for a malformed body or field (not JSON, not an object, missing or non-string
``image``, invalid base64, a threshold that is not a number in [0, 1], malformed points or box),
413 for a frame above the pixel limit (decompression bombs), 422 for bytes that are not a usable
image (unknown format, truncated or corrupt file).
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import math
import re
import reprlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mask2former.io import ImageDecodeError, decode_image

DEFAULT_MAX_PIXELS = 40_000_000
"""About 8K UHD. Each kept instance holds a full-frame mask, so the limit bounds memory too."""

_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")

Point = tuple[float, float]


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 3, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 60


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: refusals quote the client's value, which may be huge."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def describe_body(body: Any, max_keys: int = 12) -> str:
    """What a request carried, for the log line of a refusal: field names and sizes, never pixels."""
    if isinstance(body, Mapping):
        names = [str(key)[:40] for key in itertools.islice(body, max_keys)]
        more = f", ... ({len(body)} fields)" if len(body) > max_keys else ""
        return f"fields [{', '.join(names)}{more}]"
    if isinstance(body, str):
        return f"a text body of {len(body)} characters"
    if isinstance(body, (bytes, bytearray, memoryview)):
        return f"a body of {memoryview(body).nbytes} bytes"
    return f"a {type(body).__name__} body"


class RequestError(ValueError):
    """A request the function refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DetectorRequest:
    image: np.ndarray
    threshold: float


@dataclass(frozen=True)
class InteractorRequest:
    """Clicks in frame pixels (CVAT canvas coordinates); ``box`` is ``(xtl, ytl, xbr, ybr)`` or None."""

    image: np.ndarray
    threshold: float
    positive: tuple[Point, ...]
    negative: tuple[Point, ...]
    box: tuple[float, float, float, float] | None


def parse_body(body: Any) -> dict[str, Any]:
    """The JSON object of an event body: Nuclio hands CVAT's JSON over as a dict, curl's as bytes."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, "request body is not UTF-8 JSON") from None
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as error:
            raise RequestError(400, f"request body is not valid JSON: {error}") from None
    if not isinstance(body, Mapping):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return dict(body)


def parse_threshold(body: Mapping[str, Any], default: float) -> float:
    """``threshold`` in [0, 1]; absent or null means ``default`` (CVAT omits it when it is 0 or unset)."""
    value = body.get("threshold")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"threshold must be a number in [0, 1], got {short_repr(value)}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise RequestError(400, f"threshold must be within [0, 1], got {value}")
    return value


def decode_frame(body: Mapping[str, Any], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``image`` (base64 of the frame file) -> RGB uint8 array; gray, RGBA and 16-bit frames are converted."""
    text = body.get("image")
    if text is None:
        raise RequestError(400, "missing 'image' (base64 of a JPEG or PNG frame)")
    if not isinstance(text, str):
        raise RequestError(400, f"'image' must be a base64 string, got {type(text).__name__}")
    text = _WHITESPACE.sub("", _DATA_URL.sub("", text, count=1))
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(400, f"'image' is not valid base64: {error}") from None
    if not data:
        raise RequestError(400, "'image' is empty")
    _refuse_oversized(data, max_pixels)
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as error:
        raise RequestError(422, f"'image' cannot be decoded: {error}") from None


def _refuse_oversized(data: bytes, max_pixels: int) -> None:
    """413 from the header alone, before any pixel is decoded (what a decompression bomb needs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"'image' rejected as a decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return  # not readable at all: decode_image gives the precise reason (422)
    if width * height > max_pixels:
        raise RequestError(413, f"'image' is {width}x{height} = {width * height} pixels, "
                                f"above this function's limit of {max_pixels}")


def _point(value: Any, where: str) -> Point:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
            or not all(math.isfinite(float(v)) for v in value)):
        raise RequestError(400, f"{where} must be an [x, y] pair of numbers, got {short_repr(value)}")
    return float(value[0]), float(value[1])


def parse_points(body: Mapping[str, Any], key: str) -> tuple[Point, ...]:
    """``[[x, y], ...]`` in frame pixels; absent or null is no points."""
    value = body.get(key)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise RequestError(400, f"'{key}' must be a list of [x, y] points, got {type(value).__name__}")
    return tuple(_point(item, f"'{key}'[{index}]") for index, item in enumerate(value))


def parse_box(body: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """``obj_bbox`` as CVAT sends it, ``[[xtl, ytl], [xbr, ybr]]`` (a flat 4-list is accepted too).

    No box is ``[]`` (what CVAT 2.73's UI sends for a plain click), null or no key at all; any
    other value must be a well-formed box.
    """
    value = body.get("obj_bbox")
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 4:
        value = [value[:2], value[2:]]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise RequestError(400, f"'obj_bbox' must be [[xtl, ytl], [xbr, ybr]] or [] for no box, "
                                f"got {short_repr(value)}")
    (x0, y0), (x1, y1) = (_point(corner, "'obj_bbox' corner") for corner in value)
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def parse_detector_request(
    body: Any, *, default_threshold: float, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DetectorRequest:
    fields = parse_body(body)
    threshold = parse_threshold(fields, default_threshold)  # cheap checks before decoding
    return DetectorRequest(image=decode_frame(fields, max_pixels=max_pixels), threshold=threshold)


def parse_interactor_request(
    body: Any, *, default_threshold: float, max_pixels: int = DEFAULT_MAX_PIXELS
) -> InteractorRequest:
    fields = parse_body(body)
    threshold = parse_threshold(fields, default_threshold)
    positive, negative = parse_points(fields, "pos_points"), parse_points(fields, "neg_points")
    box = parse_box(fields)
    if not positive and box is None:
        raise RequestError(400, "an interaction needs at least one positive point or a box")
    image = decode_frame(fields, max_pixels=max_pixels)
    return InteractorRequest(image=image, threshold=threshold, positive=positive, negative=negative, box=box)
