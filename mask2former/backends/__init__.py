"""Network runners behind the predictor: each maps a padded batch to ``(pred_logits, pred_masks)``.

``torch`` runs the model eagerly (fp32, or autocast bf16/fp16); ``openvino`` runs a converted
graph on CPU. ``auto`` picks OpenVINO on CPU when it is installed, torch otherwise. A runner is
built from a :class:`ModelSource` (config, weights, digest); the environment is read by the entry
points, never here (``BARRIER_BACKEND`` reaches this module as ``DEPLOY.BACKEND``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import torch

from ..modeling.pixel_decoder.fused_sampling import fused_kernel_available, warm_up_in_background
from ..modeling.pixel_decoder.fused_sampling import warm_up as fused_warm_up
from .model_source import ModelSource
from .torch_backend import TorchRunner

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")


class NetworkRunner(Protocol):
    name: str

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def describe(self) -> str: ...


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        from .openvino_runtime import openvino_available

        backend = "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if backend == "openvino" and device.type != "cpu":
        raise ValueError(f"the OpenVINO backend runs on CPU; got device {device}")
    return backend


def make_runner(source: ModelSource, *, backend: str, precision: str, device: torch.device) -> NetworkRunner:
    """The runner for ``source``. With OpenVINO and a warm cache the torch model is never built:
    the converted graph is keyed by the weights' digest and the model config."""
    cfg = source.cfg
    # the fused CPU sampling kernel (DEPLOY.FUSED_SAMPLING, where numba is installed)
    fused = bool(cfg.DEPLOY.FUSED_SAMPLING) and device.type == "cpu" and fused_kernel_available()
    if fused:
        warm_up_in_background()  # numba's start-up overlaps the model's loading
    if resolve_backend(backend, device) == "torch":
        return TorchRunner(source.torch_model(), device, precision, fused_sampling=fused)
    from .ir_cache import DIGESTS, ConvertedModelCache, cache_key
    from .openvino_backend import OpenVinoRunner, convert_network

    cache = ConvertedModelCache(cfg.DEPLOY.CACHE_DIR or None)
    key = cache_key(source.digest(memo=cache.root / DIGESTS), cfg, sampling="fused-op" if fused else "graph")
    converted = cache.load(key)
    if converted is None:
        logger.info("converting the model to OpenVINO (once per weights/config; cached in %s)", cache.root)
        converted = convert_network(source.torch_model(), fused_sampling=fused)
        cache.store(key, converted)
    return OpenVinoRunner(converted, precision=precision, compiled_cache_dir=cache.root / "compiled")


def warm_up(runner: NetworkRunner, sizes: Sequence[tuple[int, int]] = ()) -> None:
    """Fill what a first request would otherwise pay for: the fused kernel's compiled code (its disk
    cache) and, per padded input ``(height, width)``, the compiled network (OpenVINO's compiled-model
    cache), so a fresh worker starts from disk."""
    start = time.perf_counter()
    kernel_cache = fused_warm_up()
    if kernel_cache is not None:
        logger.info("fused sampling kernel ready in %.1f s (cached in %s)", time.perf_counter() - start, kernel_cache)
    for height, width in sizes:
        start = time.perf_counter()
        runner(torch.zeros(1, 3, height, width))
        logger.info("compiled for %dx%d in %.1f s", height, width, time.perf_counter() - start)
