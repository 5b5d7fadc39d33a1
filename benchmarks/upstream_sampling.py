"""Upstream Mask2Former's pure-PyTorch deformable sampling, for "before" measurements only.

It samples every level, stacks all samples of all levels and points, then takes one weighted
sum: the formulation the product replaced with per-level accumulation.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def upstream_deformable_sample(value, spatial_shapes, reference_points, sampling_offsets, attention_weights):
    """Same signature and result as ``ms_deform_attn.deformable_sample``."""
    batch, _, heads, head_dim = value.shape
    queries, levels, points = sampling_offsets.shape[1], sampling_offsets.shape[3], sampling_offsets.shape[4]
    normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=value.dtype)
    locations = reference_points[:, :, None, None, None, :] + sampling_offsets / normalizer[None, None, None, :, None]
    grids = 2 * locations - 1
    value_levels = value.split([h * w for h, w in spatial_shapes], dim=1)
    samples = []
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = value_levels[level].flatten(2).transpose(1, 2).reshape(batch * heads, head_dim, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    stacked = torch.stack(samples, dim=-2).flatten(-2)
    return (stacked * weights).sum(-1).view(batch, heads * head_dim, queries).transpose(1, 2)


