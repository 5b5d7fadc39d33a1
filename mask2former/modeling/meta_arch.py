"""The MaskFormer meta-architecture: backbone -> pixel decoder -> transformer decoder.

Module names mirror upstream (``backbone``, ``sem_seg_head.pixel_decoder``,
``sem_seg_head.predictor``, ``criterion``) so checkpoints load key for key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .pixel_decoder.msdeformattn import MSDeformAttnPixelDecoder
from .transformer_decoder import MultiScaleMaskedTransformerDecoder


class ClassWeights(nn.Module):
    """Holds ``empty_weight`` (per-class loss weights, the last one for "no object").

    Upstream keeps this buffer on its loss module, so every checkpoint carries
    ``criterion.empty_weight``; the training losses read it from here.
    """

    def __init__(self, num_classes: int, no_object_weight: float) -> None:
        super().__init__()
        weights = torch.ones(num_classes + 1)
        weights[-1] = no_object_weight
        self.register_buffer("empty_weight", weights)


class MaskFormerHead(nn.Module):
    _version = 2

    def __init__(
        self, pixel_decoder: MSDeformAttnPixelDecoder, predictor: MultiScaleMaskedTransformerDecoder
    ) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.predictor(multi_scale_features, mask_features)


class MaskFormer(nn.Module):
    """Mask2Former for instance segmentation.

    ``forward`` takes a normalised, padded batch (see :meth:`preprocess`) and returns the raw
    predictions; turning them into instances is :mod:`mask2former.postprocess`'s job.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: MaskFormerHead,
        num_classes: int,
        num_queries: int,
        no_object_weight: float,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = ClassWeights(num_classes, no_object_weight)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise ``(3, H, W)`` float RGB images, zero-pad bottom/right to a common size.

        The padded size is the largest image rounded up to ``size_divisibility``, as detectron2's
        ``ImageList.from_tensors``; returns the batch and each image's unpadded ``(H, W)``.
        """
        if not images:
            raise ValueError("preprocess needs at least one image")
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        stride = max(self.size_divisibility, 1)
        height = -(-max(h for h, _ in sizes) // stride) * stride
        width = -(-max(w for _, w in sizes) // stride) * stride
        batch = self.pixel_mean.new_zeros((len(images), 3, height, width))
        for index, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"images must be (3, H, W), got {tuple(image.shape)}")
            normalised = (image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
            batch[index, :, : image.shape[-2], : image.shape[-1]] = normalised
        return batch, sizes

    def forward(self, batch: torch.Tensor) -> dict:
        """``pred_logits (B, Q, K+1)``, ``pred_masks (B, Q, H/4, W/4)``, ``aux_outputs``."""
        return self.sem_seg_head(self.backbone(batch))


class ExportableMaskFormer(nn.Module):
    """The network as one traceable function of a padded batch: ``(pred_logits, pred_masks)``."""

    def __init__(self, model: MaskFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model(batch)
        return outputs["pred_logits"], outputs["pred_masks"]


def upsample_masks(mask_logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear (align_corners False) resize of ``(..., h, w)`` mask logits, as upstream."""
    shape = mask_logits.shape
    flat = mask_logits.reshape(1, -1, shape[-2], shape[-1])
    resized = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    return resized.reshape(*shape[:-2], *resized.shape[-2:])
