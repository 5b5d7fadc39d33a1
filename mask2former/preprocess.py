"""Image -> network input, exactly as detectron2's predictor and MaskFormer prepare it.

Shortest edge resized to ``INPUT.MIN_SIZE_TEST`` (longest capped at ``MAX_SIZE_TEST``) with PIL
bilinear, then normalised and zero-padded bottom/right to the size divisibility. Kept apart from
the model so backends that never build the torch model (a cached OpenVINO graph) use it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge`` output size, rounding included; ``short_edge`` 0 = keep."""
    if short_edge <= 0:
        return height, width
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bilinear, as detectron2 resizes uint8 images."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def normalize_and_pad(
    images: Sequence[torch.Tensor],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    size_divisibility: int,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Normalise ``(3, H, W)`` float RGB images and zero-pad them into one batch.

    The padded size is the largest image rounded up to ``size_divisibility``, as detectron2's
    ``ImageList.from_tensors``; returns the batch and each image's unpadded ``(H, W)``.
    """
    if not images:
        raise ValueError("need at least one image")
    for image in images:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"images must be (3, H, W), got {tuple(image.shape)}")
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    stride = max(size_divisibility, 1)
    height = -(-max(h for h, _ in sizes) // stride) * stride
    width = -(-max(w for _, w in sizes) // stride) * stride
    mean = pixel_mean.view(-1, 1, 1)
    std = pixel_std.view(-1, 1, 1)
    batch = mean.new_zeros((len(images), 3, height, width))
    for index, image in enumerate(images):
        batch[index, :, : image.shape[-2], : image.shape[-1]] = (image.to(mean.device, torch.float32) - mean) / std
    return batch, sizes
