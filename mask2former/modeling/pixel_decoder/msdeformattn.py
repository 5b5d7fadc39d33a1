"""Mask2Former's pixel decoder: a deformable-attention encoder over res3-res5 plus one FPN level."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import Conv2dNorm, ShapeSpec, c2_xavier_fill, get_norm
from ..position_encoding import PixelPositionFeatures, PositionEmbeddingSine
from .ms_deform_attn import MSDeformAttn


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm deformable self-attention + FFN."""

    def __init__(
        self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int
    ) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


class MSDeformAttnTransformerEncoder(nn.Module):
    def __init__(self, layers: list[MSDeformAttnTransformerEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


def reference_points_for(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Cell centres of every level, normalised to [0, 1], as ``(1, sum(H*W), 2)`` in ``(x, y)``.

    Built with ``arange`` over the (possibly traced) sizes so an exported graph stays size-free.
    """
    points = []
    for height, width in spatial_shapes:
        ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
        xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
    return torch.cat(points, dim=0)[None]


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable encoder over flattened levels; all padding masks are empty (valid ratios 1)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_feature_levels: int,
        enc_n_points: int = 4,
    ) -> None:
        super().__init__()
        self.encoder = MSDeformAttnTransformerEncoder(
            [
                MSDeformAttnTransformerEncoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(
        self, srcs: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        spatial_shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        pos_flatten = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
             for level, pos in enumerate(pos_embeds)],
            dim=1,
        )
        reference_points = reference_points_for(spatial_shapes, src_flatten.device)
        output = src_flatten
        for layer in self.encoder.layers:
            output = layer(output, pos_flatten, reference_points, spatial_shapes)
        return output, spatial_shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Turns backbone features into per-pixel mask features and three scales for the decoder."""

    def __init__(
        self,
        input_shape: Mapping[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: str,
        transformer_in_features: Sequence[str],
        common_stride: int,
        maskformer_num_feature_levels: int = 3,
        position_features: int = 0,
        position_min_period: float = 16.0,
    ) -> None:
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in ordered]
        feature_channels = [shape.channels for _, shape in ordered]
        transformer_ordered = [(n, s) for n, s in ordered if n in transformer_in_features]
        if missing := set(transformer_in_features) - set(self.in_features):
            raise ValueError(f"deformable encoder features {sorted(missing)} are not backbone outputs")
        self.transformer_in_features = [name for name, _ in transformer_ordered]
        self.transformer_num_feature_levels = len(self.transformer_in_features)
        self.maskformer_num_feature_levels = maskformer_num_feature_levels

        # from low to high resolution (res5 -> res3)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(shape.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, shape in reversed(transformer_ordered)
        )
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.constant_(projection[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_features = Conv2dNorm(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        # Optional (not upstream): fine pixel positions added to the mask features, see PixelPositionFeatures.
        self.mask_position = None
        if position_features > 0:
            self.mask_position = PixelPositionFeatures(position_features, position_min_period, common_stride)
            self.mask_position_proj = nn.Conv2d(self.mask_position.out_channels, mask_dim, kernel_size=1)

        smallest_stride = min(shape.stride for _, shape in transformer_ordered)
        self.num_fpn_levels = round(math.log2(smallest_stride) - math.log2(common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for index, channels in enumerate(feature_channels[: self.num_fpn_levels]):
            lateral = Conv2dNorm(channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2dNorm(
                conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                norm=get_norm(norm, conv_dim), activation=F.relu,
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{index + 1}", lateral)
            self.add_module(f"layer_{index + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # top-down order (low to high resolution); plain lists: the modules are registered above
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    def forward(self, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns ``mask_features`` (stride 4) and the multi-scale features (low to high resolution)."""
        srcs, pos = [], []
        for index, name in enumerate(reversed(self.transformer_in_features)):
            x = features[name].float()
            srcs.append(self.input_proj[index](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes = self.transformer(srcs, pos)

        batch = memory.shape[0]
        channels = memory.shape[2]
        levels = memory.split([height * width for height, width in spatial_shapes], dim=1)
        outputs = [
            level.transpose(1, 2).reshape(batch, channels, height, width)
            for level, (height, width) in zip(levels, spatial_shapes, strict=True)
        ]
        for index, name in enumerate(reversed(self.in_features[: self.num_fpn_levels])):
            lateral = self.lateral_convs[index](features[name].float())
            upsampled = F.interpolate(outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(self.output_convs[index](lateral + upsampled))
        mask_features = self.mask_features(outputs[-1])
        if self.mask_position is not None:
            mask_features = mask_features + self.mask_position_proj(self.mask_position(mask_features))
        return mask_features, outputs[: self.maskformer_num_feature_levels]
