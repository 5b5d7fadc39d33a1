"""Multi-scale deformable attention in pure PyTorch (no compiled op, exportable).

Levels are sampled one at a time and their weighted samples accumulated, instead of stacking
every sampled value of every level before the reduction: the same sum, a third of the memory.

``deformable_sample`` is the reference and what training, GPUs and exports use. The CPU runners
ask for the fused kernel (``fused_sampling``) through :func:`sampling_mode`: ``"fused"`` runs it
eagerly where no gradient is needed, ``"fused-op"`` traces the sampling as one boundary module that
the OpenVINO conversion turns into a custom operation running the same kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .fused_sampling import fused_deformable_sample, fused_kernel_available

SAMPLING_MODES = ("reference", "fused", "fused-op")
_sampling = contextvars.ContextVar("barrier_deformable_sampling", default="reference")


@contextlib.contextmanager
def sampling_mode(mode: str) -> Iterator[None]:
    """How ``MSDeformAttn`` samples inside the block (this thread/context only): ``reference``
    (``deformable_sample``), ``fused`` (the fused CPU kernel where usable, else the reference),
    ``fused-op`` (a ``FusedSamplingBoundary`` call, for the OpenVINO conversion)."""
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {mode!r}")
    token = _sampling.set(mode)
    try:
        yield
    finally:
        _sampling.reset(token)


def level_shapes_tensor(spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """``(L, 2)`` int64 ``(H, W)`` from the (possibly traced) sizes, so an export stays size-free."""
    one = torch.ones(1, dtype=torch.int64, device=device)
    return torch.stack([torch.cat((one * height, one * width)) for height, width in spatial_shapes])


class FusedSamplingBoundary(nn.Module):
    """Marks the sampling for the OpenVINO conversion, which replaces this module with the fused
    operation (``backends.openvino_fused_op``); called eagerly it is ``deformable_sample``. No
    parameters: the checkpoint layout does not change."""

    def forward(self, value: torch.Tensor, level_shapes: torch.Tensor, reference_points: torch.Tensor,
                sampling_offsets: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # traced only to be replaced by the operation: no size is frozen
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            shapes = [(int(height), int(width)) for height, width in level_shapes.tolist()]
        return deformable_sample(value, shapes, reference_points, sampling_offsets, attention_weights)


def _fused_usable(*tensors: torch.Tensor) -> bool:
    """The kernel has no backward and runs on CPU, eagerly (a trace must record the reference ops)."""
    return (
        not torch.jit.is_tracing()
        and all(t.device.type == "cpu" for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and fused_kernel_available()
    )


def deformable_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted bilinear samples around each query's reference point.

    Args:
        value: ``(N, sum(H*W), heads, head_dim)``, levels concatenated in ``spatial_shapes`` order.
        spatial_shapes: ``(H, W)`` per level (traced sizes when tracing).
        reference_points: ``(N or 1, Lq, 2)`` normalised ``(x, y)`` in [0, 1].
        sampling_offsets: ``(N, Lq, heads, levels, points, 2)`` in pixels of each level.
        attention_weights: ``(N, Lq, heads, levels, points)``, softmax-normalised over levels*points.

    Returns:
        ``(N, Lq, heads * head_dim)``.
    """
    batch, _, heads, head_dim = value.shape
    queries = sampling_offsets.shape[1]
    points = sampling_offsets.shape[4]
    value_levels = value.split([height * width for height, width in spatial_shapes], dim=1)
    offsets_levels = sampling_offsets.unbind(3)
    weights_levels = attention_weights.unbind(3)
    # grid_sample wants [-1, 1]: 2 * (reference + offset / size) - 1
    reference_grid = (2 * reference_points - 1)[:, :, None, None, :]
    two = value.new_full((1,), 2.0)
    output = value.new_zeros(())
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = value_levels[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        per_pixel = torch.cat((two / width, two / height))  # from the (traced) sizes, not constants
        grid = reference_grid + offsets_levels[level] * per_pixel
        grid = grid.transpose(1, 2).flatten(0, 1)  # (N*heads, Lq, points, 2)
        samples = F.grid_sample(level_value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        weights = weights_levels[level].transpose(1, 2).reshape(batch * heads, 1, queries, points)
        output = output + (samples * weights).sum(-1)
    return output.view(batch, heads * head_dim, queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Deformable attention over ``n_levels`` feature maps (Deformable DETR; keys as upstream)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.sampling_boundary = FusedSamplingBoundary()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on rings around the reference point, one direction per head."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> torch.Tensor:
        batch, queries, _ = query.shape
        head_dim = self.d_model // self.n_heads
        value = self.value_proj(value).view(batch, -1, self.n_heads, head_dim)
        offsets = self.sampling_offsets(query).view(
            batch, queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(batch, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(batch, queries, self.n_heads, self.n_levels, self.n_points)
        sampled = self._sample(value.float(), spatial_shapes, reference_points.float(), offsets.float(),
                               weights.float())
        return self.output_proj(sampled.to(query.dtype))

    def _sample(self, value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]], reference_points: torch.Tensor,
                offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        mode = _sampling.get()
        if mode == "fused-op":
            return self.sampling_boundary(value, level_shapes_tensor(spatial_shapes, value.device), reference_points,
                                          offsets, weights)
        if mode == "fused" and _fused_usable(value, reference_points, offsets, weights):
            return fused_deformable_sample(value, spatial_shapes, reference_points, offsets, weights)
        return deformable_sample(value, spatial_shapes, reference_points, offsets, weights)
