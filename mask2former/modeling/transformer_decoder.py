"""Mask2Former's masked-attention transformer decoder (``MultiScaleMaskedTransformerDecoder``).

Everything is batch-first. The attention mask of a query is "outside the query's own predicted
mask"; a query whose mask is empty at a level attends everywhere there. That rule is written as
a boolean expression, not as in-place indexing, so it traces and exports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .layers import MLP, Conv2dNorm, c2_xavier_fill
from .position_encoding import PixelPositionFeatures, PositionEmbeddingSine


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters and state-dict keys, computed with fused SDPA.

    ``blocked`` is a boolean mask broadcastable to ``(B, heads, Lq, Lk)``; True = may not attend.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        allowed = None if blocked is None else ~blocked
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        if self.normalize_before:
            normed = self.norm(tgt)
            q = normed + query_pos
            return tgt + self.dropout(self.self_attn(q, q, normed))
        q = tgt + query_pos
        return self.norm(tgt + self.dropout(self.self_attn(q, q, tgt)))


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        blocked: torch.Tensor | None,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        source = self.norm(tgt) if self.normalize_before else tgt
        attended = self.multihead_attn(source + query_pos, memory + pos, memory, blocked)
        if self.normalize_before:
            return tgt + self.dropout(attended)
        return self.norm(tgt + self.dropout(attended))


class FFNLayer(nn.Module):
    def __init__(
        self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0, normalize_before: bool = False
    ) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        source = self.norm(tgt) if self.normalize_before else tgt
        hidden = self.linear2(self.dropout(F.relu(self.linear1(source))))
        if self.normalize_before:
            return tgt + self.dropout(hidden)
        return self.norm(tgt + self.dropout(hidden))


def _xavier_matrices(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Learned queries refined by masked cross-attention, cycling through three feature scales."""

    _version = 2
    num_feature_levels = 3

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        position_features: int = 0,
        position_min_period: float = 16.0,
        level_strides: Sequence[int] = (32, 16, 8),
    ) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, 0.0, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                projection = Conv2dNorm(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(projection)
                self.input_proj.append(projection)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        # Optional (not upstream): fine pixel positions added to keys *and values* of the cross-attention,
        # so that a query's content learns where it looked (see PixelPositionFeatures).
        self.source_positions = nn.ModuleList()
        if position_features > 0:
            if len(level_strides) != self.num_feature_levels:
                raise ValueError(f"expected {self.num_feature_levels} level strides, got {list(level_strides)}")
            self.source_positions.extend(PixelPositionFeatures(position_features, position_min_period, stride)
                                         for stride in level_strides)
            self.source_position_proj = nn.ModuleList(
                nn.Linear(4 * position_features, hidden_dim) for _ in range(self.num_feature_levels))

    def forward(
        self, features: Sequence[torch.Tensor], mask_features: torch.Tensor
    ) -> dict[str, torch.Tensor | list[dict[str, torch.Tensor]]]:
        if len(features) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(features)}")
        sources, positions, sizes = [], [], []
        for level, feature in enumerate(features):
            sizes.append(feature.shape[-2:])
            positions.append(self.pe_layer(feature).flatten(2).transpose(1, 2))
            projected = self.input_proj[level](feature).flatten(2) + self.level_embed.weight[level][None, :, None]
            projected = projected.transpose(1, 2)
            if len(self.source_positions):
                fine = self.source_positions[level](feature).flatten(2).transpose(1, 2)
                projected = projected + self.source_position_proj[level](fine)
            sources.append(projected)
        batch = sources[0].shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)

        classes, masks, blocked = self.prediction_heads(output, mask_features, sizes[0])
        all_classes, all_masks = [classes], [masks]
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # a query that would see nothing sees everything instead
            blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](
                output, sources[level], blocked, positions[level], query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            is_last = i == self.num_layers - 1
            classes, masks, blocked = self.prediction_heads(
                output, mask_features, None if is_last else sizes[(i + 1) % self.num_feature_levels]
            )
            all_classes.append(classes)
            all_masks.append(masks)
        return {
            "pred_logits": all_classes[-1],
            "pred_masks": all_masks[-1],
            "aux_outputs": [
                {"pred_logits": c, "pred_masks": m} for c, m in zip(all_classes[:-1], all_masks[:-1], strict=True)
            ],
        }

    def prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, attn_size: Sequence[int] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Class logits, mask logits, and the next layer's attention mask (None when not needed)."""
        decoded = self.decoder_norm(output)
        classes = self.class_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        if attn_size is None:
            return classes, masks, None
        resized = F.interpolate(masks, size=attn_size, mode="bilinear", align_corners=False)
        blocked = (resized.sigmoid().flatten(2) < 0.5).unsqueeze(1).detach()  # (B, 1, Q, HW)
        return classes, masks, blocked
