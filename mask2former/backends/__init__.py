"""Network runners behind the predictor: each maps a padded batch to ``(pred_logits, pred_masks)``.

``torch`` runs the model eagerly (fp32, or autocast bf16/fp16); ``openvino`` runs a converted
graph on CPU. ``auto`` picks OpenVINO on CPU when it is installed, torch otherwise; the
``BARRIER_BACKEND`` environment variable overrides ``auto`` (for deployments).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Protocol

import torch
from fvcore.common.config import CfgNode

from ..modeling.meta_arch import MaskFormer
from ..modeling.pixel_decoder.fused_sampling import fused_kernel_available, warm_up_in_background
from .torch_backend import TorchRunner

logger = logging.getLogger(__name__)

BACKEND_ENV = "BARRIER_BACKEND"
BACKENDS = ("auto", "torch", "openvino")


class NetworkRunner(Protocol):
    name: str

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def describe(self) -> str: ...


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV, "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        from .openvino_backend import openvino_available

        backend = "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if backend == "openvino" and device.type != "cpu":
        raise ValueError(f"the OpenVINO backend runs on CPU; got device {device}")
    return backend


def make_runner(
    *,
    backend: str,
    precision: str,
    device: torch.device,
    cfg: CfgNode,
    model: Callable[[], MaskFormer],
    weights_digest: Callable[[], str],
) -> NetworkRunner:
    """Build the runner; ``model`` is only called when the backend needs the torch model.

    With OpenVINO and a warm cache the torch model is never built: the converted graph is keyed
    by ``weights_digest()`` (the weights' content) and the model config.
    """
    # the fused CPU sampling kernel (DEPLOY.FUSED_SAMPLING, where numba is installed)
    fused = bool(cfg.DEPLOY.FUSED_SAMPLING) and device.type == "cpu" and fused_kernel_available()
    if fused:
        warm_up_in_background()  # numba's start-up overlaps the model's loading
    if resolve_backend(backend, device) == "torch":
        return TorchRunner(model(), device, precision, fused_sampling=fused)
    from .ir_cache import ConvertedModelCache, cache_key
    from .openvino_backend import OpenVinoRunner, convert_network

    cache = ConvertedModelCache(cfg.DEPLOY.CACHE_DIR or None)
    key = cache_key(weights_digest(), cfg, sampling="fused-op" if fused else "graph")
    converted = cache.load(key)
    if converted is None:
        logger.info("converting the model to OpenVINO (once per weights/config; cached in %s)", cache.root)
        converted = convert_network(model(), fused_sampling=fused)
        cache.store(key, converted)
    return OpenVinoRunner(converted, precision=precision, compiled_cache_dir=cache.root / "compiled")
