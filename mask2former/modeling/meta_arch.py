"""The MaskFormer meta-architecture: backbone -> pixel decoder -> transformer decoder.

Module names mirror upstream (``backbone``, ``sem_seg_head.pixel_decoder``,
``sem_seg_head.predictor``, ``criterion``) so checkpoints load key for key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..preprocess import normalize_and_pad
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
        """Normalise ``(3, H, W)`` float RGB images and zero-pad them to one batch (see ``normalize_and_pad``)."""
        return normalize_and_pad(images, self.pixel_mean, self.pixel_std, self.size_divisibility)

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
