"""Runs the network eagerly in PyTorch: fp32, bf16 autocast on CPU, fp16/bf16 autocast on CUDA."""

from __future__ import annotations

import contextlib
import logging

import torch

from ..modeling.meta_arch import ExportableMaskFormer, MaskFormer
from ..modeling.pixel_decoder.ms_deform_attn import sampling_mode
from .precision import check_precision

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_torch_precision(precision: str, device: torch.device) -> str:
    """``auto`` = fp32 on CPU (exact) and fp16 on CUDA; bf16 needs a CPU or GPU that has it."""
    if check_precision(precision) == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 with the torch backend needs CUDA; use bf16 or fp32 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use fp16")
    return precision


class TorchRunner:
    """``batch (B, 3, H, W)`` -> ``(pred_logits, pred_masks)`` in float32, on the model's device.

    The deformable sampling keeps fp32 inside autocast (see ``MSDeformAttn``); ``fused_sampling``
    runs it with the fused CPU kernel (inference only; the caller checks it is installed);
    ``compile=True`` wraps the network in ``torch.compile`` (first call per input size is slow).
    """

    name = "torch"

    def __init__(self, model: MaskFormer, device: torch.device, precision: str = "fp32",
                 compile: bool = False, fused_sampling: bool = False) -> None:
        self.device = device
        self.fused_sampling = fused_sampling and device.type == "cpu"
        self.precision = resolve_torch_precision(precision, device)
        self.model = model.to(device).eval()
        self.network = ExportableMaskFormer(self.model).eval()
        if compile:
            self.network = torch.compile(self.network, dynamic=False)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode(), self._autocast(), sampling_mode("fused" if self.fused_sampling else "reference"):
            logits, masks = self.network(batch.to(self.device))
        return logits.float(), masks.float()

    def describe(self) -> str:
        return f"torch {self.precision} on {self.device}{', fused sampling' if self.fused_sampling else ''}"
