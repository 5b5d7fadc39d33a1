"""Hungarian matching of queries to ground-truth instances (Mask2Former's bipartite matcher).

Each image is matched on its own: cost = w_class * (-p(target class)) + w_mask * sigmoid-BCE +
w_dice * dice, the mask costs on one set of uniformly random points shared by every prediction
and target of that image. One-to-one assignment by ``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .point_sampling import point_sample

MatchIndices = list[tuple[torch.Tensor, torch.Tensor]]
"""Per image: (query indices, target indices), int64 tensors of equal length, on the CPU."""


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean per-point BCE of every prediction [N, P] against every target [M, P] -> [N, M]."""
    num_points = logits.shape[1]
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    cost = pos @ targets.T + neg @ (1 - targets).T
    return cost / num_points


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft dice loss (with +1 smoothing) of every prediction [N, P] vs every target [M, P] -> [N, M]."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher:
    """Assign each ground-truth instance one query, minimising the Mask2Former matching cost.

    ``num_points`` uniformly random points per image (TRAIN_NUM_POINTS upstream) keep the mask
    cost cheap; weights are the config's CLASS_WEIGHT / MASK_WEIGHT / DICE_WEIGHT.
    """

    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0,
                 num_points: int = 12544) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are zero")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def cost_matrix(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                    labels: torch.Tensor, masks: torch.Tensor,
                    point_coords: torch.Tensor | None = None) -> torch.Tensor:
        """Cost [Q, M] for one image: ``pred_logits`` [Q, K+1], ``pred_masks`` [Q, h, w],
        ``labels`` [M], ``masks`` [M, H, W]; ``point_coords`` [P, 2] fixes the points (tests)."""
        probs = pred_logits.float().softmax(-1)
        cost_class = -probs[:, labels]
        if point_coords is None:
            point_coords = torch.rand(self.num_points, 2, device=pred_masks.device)
        coords = point_coords.to(pred_masks.device, torch.float32)
        out = point_sample(pred_masks[:, None].float(), coords.expand(pred_masks.shape[0], -1, -1))[:, 0]
        tgt = point_sample(masks[:, None].to(device=pred_masks.device, dtype=torch.float32),
                           coords.expand(masks.shape[0], -1, -1))[:, 0]
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            cost_mask = pairwise_sigmoid_bce(out, tgt)
            cost_dice = pairwise_dice(out, tgt)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def __call__(self, outputs: Mapping[str, torch.Tensor],
                 targets: Sequence[Mapping[str, torch.Tensor]]) -> MatchIndices:
        """Match a batch: ``outputs`` with ``pred_logits`` [B, Q, K+1] and ``pred_masks`` [B, Q, h, w]."""
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {pred_logits.shape[0]}")
        indices: MatchIndices = []
        for b, target in enumerate(targets):
            labels = target["labels"].to(pred_logits.device)
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], labels, target["masks"])
            if not torch.isfinite(cost).all():
                raise FloatingPointError("non-finite matching cost: the model output has NaN/Inf")
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def __repr__(self) -> str:
        return (f"HungarianMatcher(cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
                f"cost_dice={self.cost_dice}, num_points={self.num_points})")
