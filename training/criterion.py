"""Mask2Former's training losses: classification, sigmoid BCE and dice on sampled points.

For the final prediction and, with deep supervision, every auxiliary decoder output: match
queries to targets, then ``loss_ce`` (cross-entropy over K+1 classes, the no-object class
down-weighted), ``loss_mask`` and ``loss_dice`` on importance-sampled points of matched masks,
normalised by the number of target masks averaged over all workers. Returned losses are
already multiplied by the config weights (as upstream's meta-architecture does), so the total
is their sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .matcher import HungarianMatcher, MatchIndices
from .point_sampling import logit_uncertainty, point_sample, uncertain_point_coords_with_randomness

Target = Mapping[str, torch.Tensor]


def sigmoid_bce_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Mean BCE over points, summed over masks, divided by ``num_masks``. [N, P] inputs."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, num_masks: float) -> torch.Tensor:
    """1 - soft dice (+1 smoothing) per mask, summed, divided by ``num_masks``. [N, P] inputs."""
    probs = logits.sigmoid().flatten(1)
    labels = labels.flatten(1)
    numerator = 2 * (probs * labels).sum(-1)
    denominator = probs.sum(-1) + labels.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def loss_weights(class_weight: float, mask_weight: float, dice_weight: float,
                 deep_supervision: bool, dec_layers: int) -> dict[str, float]:
    """Upstream's weight dict: one entry per loss, repeated with ``_i`` for DEC_LAYERS - 1 aux outputs."""
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    if deep_supervision:
        for i in range(dec_layers - 1):
            weights.update({f"{key}_{i}": value for key, value in base.items()})
    return weights


def prepare_targets(targets: Sequence[Target], padded_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
    """Zero-pad each target's masks (bottom/right) to the padded batch size, keeping their dtype
    (bool stays bool: 1 byte per pixel until the few sampled points are read).

    The model pads images bottom/right to a multiple of 32; masks must cover the same canvas so
    that normalised point coordinates hit the same pixels in predictions and targets.
    """
    height, width = padded_size
    prepared = []
    for target in targets:
        masks = target["masks"]
        h, w = masks.shape[-2:]
        if h > height or w > width:
            raise ValueError(f"target masks {h}x{w} larger than the padded image {height}x{width}")
        padded = masks.new_zeros((masks.shape[0], height, width))
        padded[:, :h, :w] = masks
        prepared.append({**target, "masks": padded})
    return prepared


class SetCriterion(torch.nn.Module):
    """Mask2Former's set-prediction loss; ``forward`` returns weighted losses keyed like upstream.

    ``empty_weight`` is the per-class CE weight [K+1] (ones, last = NO_OBJECT_WEIGHT); pass the
    model's ``criterion.empty_weight`` buffer to train exactly what a checkpoint stores.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: Mapping[str, float],
                 no_object_weight: float = 0.1, num_points: int = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, empty_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        if empty_weight is None:
            empty_weight = torch.ones(num_classes + 1)
            empty_weight[-1] = no_object_weight
        if empty_weight.shape != (num_classes + 1,):
            raise ValueError(f"empty_weight must have {num_classes + 1} entries, "
                             f"got {tuple(empty_weight.shape)}")
        self.register_buffer("empty_weight", empty_weight.detach().clone().float())

    @classmethod
    def from_config(cls, cfg: Any, num_classes: int | None = None,
                    empty_weight: torch.Tensor | None = None) -> SetCriterion:
        """Build from MODEL.MASK_FORMER.* (and MODEL.SEM_SEG_HEAD.NUM_CLASSES unless given).

        Pass ``empty_weight=model.criterion.empty_weight`` AFTER loading the checkpoint: upstream's
        buffer is overwritten by a loaded checkpoint, so that is the value upstream trains with.
        """
        mf = cfg.MODEL.MASK_FORMER
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if num_classes is None else num_classes
        matcher = HungarianMatcher(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.TRAIN_NUM_POINTS)
        weights = loss_weights(mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT,
                               mf.DEEP_SUPERVISION, mf.DEC_LAYERS)
        return cls(num_classes, matcher, weights, mf.NO_OBJECT_WEIGHT, mf.TRAIN_NUM_POINTS,
                   mf.OVERSAMPLE_RATIO, mf.IMPORTANCE_SAMPLE_RATIO, empty_weight)

    def loss_labels(self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Target],
                    indices: MatchIndices) -> dict[str, torch.Tensor]:
        logits = outputs["pred_logits"].float()
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, query_idx = _source_index(indices)
        if batch_idx.numel():
            matched = torch.cat([t["labels"][tgt] for t, (_, tgt) in zip(targets, indices, strict=True)])
            classes[batch_idx, query_idx] = matched.to(logits.device)
        weight = self.empty_weight.to(logits.device)
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), classes, weight)}

    def loss_masks(self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Target],
                   indices: MatchIndices, num_masks: float,
                   point_coords: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        pred_masks = outputs["pred_masks"]
        batch_idx, query_idx = _source_index(indices)
        if batch_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0  # keeps the graph (DDP needs every output used)
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src = pred_masks[batch_idx.to(pred_masks.device), query_idx.to(pred_masks.device)][:, None]
        tgt = torch.cat([t["masks"][j.to(t["masks"].device)]
                         for t, (_, j) in zip(targets, indices, strict=True)])
        # Sample in float32 even under AMP: fp16/bf16 coordinates would be off by pixels.
        src = src.float()
        tgt = tgt[:, None].to(device=src.device, dtype=torch.float32)
        with torch.no_grad():
            if point_coords is None:
                point_coords = uncertain_point_coords_with_randomness(
                    src, logit_uncertainty, self.num_points, self.oversample_ratio,
                    self.importance_sample_ratio)
            point_coords = point_coords.to(src.device, torch.float32)
            labels = point_sample(tgt, point_coords)[:, 0]
        logits = point_sample(src, point_coords)[:, 0]
        return {"loss_mask": sigmoid_bce_loss(logits, labels, num_masks),
                "loss_dice": dice_loss(logits, labels, num_masks)}

    def num_target_masks(self, targets: Sequence[Target], device: torch.device) -> float:
        """Target masks in the batch, averaged over workers, at least 1 (upstream's normaliser)."""
        count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            world_size = dist.get_world_size()
        return torch.clamp(count / world_size, min=1).item()

    def unweighted_losses(self, outputs: Mapping[str, Any],
                          targets: Sequence[Target]) -> dict[str, torch.Tensor]:
        """Raw losses of the final output and each ``aux_outputs`` entry (suffix ``_i``).

        Auxiliary outputs without any weight (DEEP_SUPERVISION off) are not even matched.
        """
        main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        _check_target_canvas(main["pred_masks"], targets)
        num_masks = self.num_target_masks(targets, outputs["pred_logits"].device)
        losses = self._losses_for(main, targets, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            if not any(key.endswith(f"_{i}") for key in self.weight_dict):
                continue
            losses.update({f"{k}_{i}": v for k, v in self._losses_for(aux, targets, num_masks).items()})
        return losses

    def forward(self, outputs: Mapping[str, Any], targets: Sequence[Target]) -> dict[str, torch.Tensor]:
        """Weighted losses; losses without a weight are dropped, as upstream's MaskFormer does."""
        losses = self.unweighted_losses(outputs, targets)
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}

    def _losses_for(self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Target],
                    num_masks: float) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        return {**self.loss_labels(outputs, targets, indices),
                **self.loss_masks(outputs, targets, indices, num_masks)}


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the (already weighted) loss terms."""
    return torch.stack([v.float() for v in losses.values()]).sum()


def _check_target_canvas(pred_masks: torch.Tensor, targets: Sequence[Target]) -> None:
    """Predictions cover the padded canvas at 1/stride; unpadded targets would be mis-sampled."""
    pred_h, pred_w = pred_masks.shape[-2:]
    for i, target in enumerate(targets):
        if len(target["labels"]) == 0:
            continue
        tgt_h, tgt_w = target["masks"].shape[-2:]
        if tgt_h * pred_w != tgt_w * pred_h:
            raise ValueError(
                f"target {i} masks are {tgt_h}x{tgt_w} but predictions {pred_h}x{pred_w}: pad target "
                "masks to the padded image size first (criterion.prepare_targets)")


def _source_index(indices: MatchIndices) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query = torch.cat([src for src, _ in indices])
    return batch, query
