"""Network runners behind the predictor: each maps a padded batch to ``(pred_logits, pred_masks)``."""

from __future__ import annotations

import os

import torch
from fvcore.common.config import CfgNode

from ..modeling.meta_arch import MaskFormer
from .torch_backend import TorchRunner

BACKEND_ENV = "BARRIER_BACKEND"


def make_runner(model: MaskFormer, *, backend: str, precision: str, device: torch.device, cfg: CfgNode):
    """``backend`` torch | openvino | auto (the ``BARRIER_BACKEND`` environment variable wins over auto)."""
    backend = os.environ.get(BACKEND_ENV, backend) if backend == "auto" else backend
    if backend == "auto":
        backend = "torch"
    if backend == "torch":
        return TorchRunner(model, device, precision)
    raise ValueError(f"unknown backend {backend!r}; expected torch, openvino or auto")
