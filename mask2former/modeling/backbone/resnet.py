"""ResNet backbone in detectron2's key layout (``stem.conv1``, ``res2.0.conv1.norm`` ...)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..layers import Conv2dNorm, ShapeSpec, c2_msra_fill, get_norm

_BLOCKS_PER_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class BottleneckBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int,
        num_groups: int,
        norm: str,
        stride_in_1x1: bool,
        dilation: int,
    ) -> None:
        super().__init__()
        self.shortcut = (
            Conv2dNorm(in_channels, out_channels, 1, stride=stride, bias=False,
                       norm=get_norm(norm, out_channels))
            if in_channels != out_channels
            else None
        )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2dNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False,
                                norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2dNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3,
                                padding=dilation, dilation=dilation, groups=num_groups, bias=False,
                                norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2dNorm(bottleneck_channels, out_channels, 1, bias=False,
                                norm=get_norm(norm, out_channels))
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet (50/101/152) with a basic stem; stages ``res2..res5``."""

    size_divisibility = 0

    def __init__(
        self,
        *,
        depth: int = 50,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        norm: str = "FrozenBN",
        num_groups: int = 1,
        width_per_group: int = 64,
        stem_out_channels: int = 64,
        res2_out_channels: int = 256,
        stride_in_1x1: bool = True,
        res5_dilation: int = 1,
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        if depth not in _BLOCKS_PER_DEPTH:
            raise ValueError(f"ResNet depth {depth} not supported; use one of {sorted(_BLOCKS_PER_DEPTH)}")
        if res5_dilation not in (1, 2):
            raise ValueError(f"RES5_DILATION must be 1 or 2, got {res5_dilation}")
        self._out_features = list(out_features)
        self.stem = nn.Module()
        self.stem.conv1 = Conv2dNorm(3, stem_out_channels, 7, stride=2, padding=3, bias=False,
                                     norm=get_norm(norm, stem_out_channels))
        c2_msra_fill(self.stem.conv1)

        in_channels, out_channels = stem_out_channels, res2_out_channels
        bottleneck = num_groups * width_per_group
        self._shapes: dict[str, ShapeSpec] = {}
        self.stage_names: list[str] = []
        stride_so_far = 4
        for index, count in enumerate(_BLOCKS_PER_DEPTH[depth]):
            name = f"res{index + 2}"
            dilation = res5_dilation if name == "res5" else 1
            first_stride = 1 if index == 0 or dilation == 2 else 2
            blocks = []
            for block_index in range(count):
                blocks.append(
                    BottleneckBlock(
                        in_channels, out_channels, bottleneck_channels=bottleneck,
                        stride=first_stride if block_index == 0 else 1, num_groups=num_groups,
                        norm=norm, stride_in_1x1=stride_in_1x1, dilation=dilation,
                    )
                )
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            stride_so_far *= first_stride
            self._shapes[name] = ShapeSpec(channels=out_channels, stride=stride_so_far)
            out_channels *= 2
            bottleneck *= 2
        if unknown := set(self._out_features) - set(self._shapes):
            raise ValueError(f"unknown ResNet out features {sorted(unknown)}")
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        """detectron2's FREEZE_AT: 1 freezes the stem, 2 also res2, and so on."""
        modules = [self.stem] + [getattr(self, name) for name in self.stage_names]
        for module in modules[:freeze_at]:
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {name: shape for name, shape in self._shapes.items() if name in self._out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu_(self.stem.conv1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs
