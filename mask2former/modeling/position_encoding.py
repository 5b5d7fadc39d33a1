"""Sine positional encoding of a feature map (DETR style, normalised to [0, 2*pi])."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Encodes (y, x) of every cell; derived from the input's shape only, so it traces at any size."""

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: int = 10000,
        normalize: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x[:, 0], dtype=torch.float32)
        y_embed = ones.cumsum(1)
        x_embed = ones.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PixelPositionFeatures(nn.Module):
    """sin/cos of every cell's centre in network-input pixels, at periods ``min_period * 2**k``.

    Not upstream (off unless ``MODEL.SEM_SEG_HEAD.POSITION_FEATURES`` > 0). DETR's normalised encoding
    above turns at most once per image, too coarse to tell one post of a run from the next. These
    periods start near a post spacing (POSITION_MIN_PERIOD px) and double; the dot product of two
    encodings is a function of their offset, so a query that carries its own position can mask
    "here, not one post further". Coordinates are in input pixels (not normalised by the padded
    size): padding changes nothing.
    """

    def __init__(self, num_freqs: int, min_period: float, stride: int) -> None:
        super().__init__()
        if num_freqs < 1 or min_period <= 0 or stride < 1:
            raise ValueError("num_freqs and stride must be >= 1 and min_period positive")
        periods = min_period * 2.0 ** torch.arange(num_freqs, dtype=torch.float32)
        self.register_buffer("angular", 2 * math.pi * stride / periods, persistent=False)
        # Periods under ~3 cells alias into per-cell noise on a coarse map: those channels stay 0.
        self.register_buffer("resolved", (periods >= 2.5 * stride).float(), persistent=False)
        self.out_channels = 4 * num_freqs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, 4 * num_freqs, H, W)`` for a feature map ``x`` of shape ``(B, C, H, W)``."""
        ones = torch.ones_like(x[:1, 0], dtype=torch.float32)
        y_cells = ones.cumsum(1) - 0.5
        x_cells = ones.cumsum(2) - 0.5
        phase_y = y_cells[..., None] * self.angular
        phase_x = x_cells[..., None] * self.angular
        features = torch.cat((phase_y.sin(), phase_y.cos(), phase_x.sin(), phase_x.cos()), dim=3)
        features = features * self.resolved.repeat(4)
        return features.permute(0, 3, 1, 2)
