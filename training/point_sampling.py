"""Point sampling for the mask losses (PointRend-style, as Mask2Former trains).

Computing BCE/dice on full-resolution masks for every matched query is memory-bound; Mask2Former
instead evaluates predictions and targets at a few thousand points per mask, most of them where
the prediction is least certain. Coordinates are normalised to ``[0, 1]`` over the whole tensor,
so predictions (1/4 resolution) and targets (input resolution) are sampled at the same places.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def point_sample(features: torch.Tensor, coords: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinearly sample ``features`` [N, C, H, W] at ``coords`` [N, P, 2] (x, y in [0, 1]).

    Returns [N, C, P]. ``coords`` of shape [N, Hg, Wg, 2] give [N, C, Hg, Wg] instead.
    ``align_corners=False`` (the default, as upstream) treats pixels as unit squares.
    """
    flat = coords.dim() == 3
    grid = coords.unsqueeze(2) if flat else coords
    out = F.grid_sample(features, 2.0 * grid - 1.0, mode="bilinear", align_corners=align_corners)
    return out.squeeze(3) if flat else out


def logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a binary logit: highest (0) at the decision boundary. Input [N, 1, ...]."""
    if logits.shape[1] != 1:
        raise ValueError(f"expected one channel of logits, got shape {tuple(logits.shape)}")
    return -logits.abs()


def uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Importance-sampled point coordinates [N, num_points, 2] in [0, 1].

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per mask, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain ones (uncertainty computed on the
    bilinearly interpolated ``coarse_logits`` [N, 1, H, W]), and fills the rest with fresh uniform
    points. Not differentiable (the coordinates are a sampling decision, not a prediction).
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = coarse_logits.shape[0]
    device = coarse_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = _uniform(num_masks, num_candidates, device, generator)
    candidate_logits = point_sample(coarse_logits.float(), candidates)
    uncertainty = uncertainty_fn(candidate_logits)[:, 0, :]  # [N, num_candidates]
    top = torch.topk(uncertainty, k=num_uncertain, dim=1).indices  # [N, num_uncertain]
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        chosen = torch.cat([chosen, _uniform(num_masks, num_random, device, generator)], dim=1)
    return chosen


def _uniform(num_masks: int, num_points: int, device: torch.device,
             generator: torch.Generator | None) -> torch.Tensor:
    if generator is not None and generator.device != device:
        return torch.rand(num_masks, num_points, 2, generator=generator).to(device)
    return torch.rand(num_masks, num_points, 2, device=device, generator=generator)
