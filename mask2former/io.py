"""Decode any frame a user or CVAT sends into the one format the model takes: RGB ``uint8`` HxWx3.

Gray, palette, RGBA, 16-bit and EXIF-rotated images are converted; truncated or corrupt files,
non-images and decompression bombs raise :class:`ImageDecodeError` with a reason a person can act on.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000  # about 10k x 10k; CVAT frames are far smaller
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""File name endings of the image formats frames are read from and pictures written in (lower case)."""


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why."""


def decode_image(data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) -> RGB uint8 array, EXIF orientation applied."""
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(bytes(data))) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
                    )
                image.load()
                return to_rgb_array(ImageOps.exif_transpose(image))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as error:
        raise ImageDecodeError("not an image (unrecognised format)") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"image rejected as a decompression bomb: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from error


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Image file -> RGB uint8 array."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageDecodeError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as error:
        raise ImageDecodeError(f"{path}: {error}") from error


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> RGB uint8; 16-bit and float images are scaled by their range, alpha dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            values = values / 257.0
        else:
            low, high = float(values.min()), float(values.max())
            values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # transparent pixels become black, as CVAT's own frame decoder shows them
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(array)


def ensure_rgb_uint8(image: np.ndarray, *, channels: str = "RGB") -> np.ndarray:
    """Validate an in-memory image; ``channels="BGR"`` flips OpenCV arrays into RGB."""
    if not isinstance(image, np.ndarray):
        raise ImageDecodeError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageDecodeError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"expected uint8 pixels, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageDecodeError(f"image has no pixels: shape {image.shape}")
    image = image[:, :, :3]
    if channels == "BGR":
        image = image[:, :, ::-1]
    elif channels != "RGB":
        raise ValueError(f"channels must be 'RGB' or 'BGR', got {channels!r}")
    return np.ascontiguousarray(image)


ImageInput = np.ndarray | str | Path | bytes
"""What the predictor accepts: an RGB (or ``channels="BGR"``) array, a file path or encoded bytes."""


def as_rgb_array(image: ImageInput, *, channels: str = "RGB") -> np.ndarray:
    """Any :data:`ImageInput` -> RGB ``uint8`` HxWx3 array."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(image)
    return ensure_rgb_uint8(image, channels=channels)
