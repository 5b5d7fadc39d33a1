"""``fused_deformable_sample``: ``deformable_sample`` as one fused CPU kernel, for inference.

Same arguments and result as :func:`.ms_deform_attn.deformable_sample` (torch tensors in and
out), so either can stand in for the other. The kernel (``fused_kernel``, compiled by numba)
reads ``value`` in the projection's layout and never materialises the sampled values; it runs
on the threads this process may use, splitting the queries between them. It has no backward:
it is for inference only, and ``MSDeformAttn`` uses it only when asked to (the CPU runners ask)
and when no gradient is needed. numba is an optional dependency (the ``openvino`` extra): when
it cannot be imported, :func:`fused_kernel_available` says so in one log line and the callers
keep the pure-PyTorch path.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from ...hardware import available_cpus

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}
_background: threading.Thread | None = None


@functools.cache
def _kernel_module() -> ModuleType | None:
    """The compiled kernel's module, or None (logged once) when numba is missing or unusable."""
    try:
        from . import fused_kernel
    except ImportError as error:
        logger.warning("fused deformable-attention kernel unavailable (%s); using the PyTorch/OpenVINO "
                       "sampling instead (install the 'openvino' extra for numba)", error)
        return None
    return fused_kernel


def fused_kernel_available() -> bool:
    """Whether the fused kernel can run here (numba importable); the first "no" is logged."""
    return _kernel_module() is not None


def _loaded_kernel() -> ModuleType:
    module = _kernel_module()
    if module is None:
        raise RuntimeError("the fused deformable-sampling kernel needs numba: pip install -e '.[openvino]'")
    with _lock:
        module.compile_kernel()
    return module


def warm_up() -> Path | None:
    """Compile the kernel now (or load it from its disk cache), so that the first request does not;
    returns the cache directory, or None without numba. ``barrier-prepare-openvino`` calls it."""
    if not fused_kernel_available():
        return None
    return _loaded_kernel().kernel_cache_dir()


def warm_up_in_background() -> None:
    """:func:`warm_up` on a daemon thread, once per process: numba's start-up (~1 s of imports and
    target set-up, even with the kernel cached) then overlaps the model's loading and compiling;
    a first call that comes sooner waits for it (the compile lock)."""
    global _background
    with _lock:
        if _background is None and fused_kernel_available():
            _background = threading.Thread(target=warm_up, name="fused-sampling-warm-up", daemon=True)
            _background.start()


def sampling_threads() -> int:
    """torch's intra-op thread count (what the rest of the network uses), within :func:`available_cpus`."""
    return max(1, min(torch.get_num_threads(), available_cpus()))


def _pool(workers: int) -> ThreadPoolExecutor:
    with _lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="fused-sampling")
        return _pools[workers]


def _forget_pools() -> None:
    """A forked child has none of the parent's threads: it builds its own pools (and its lock,
    which a parent's thread may have held at the fork)."""
    global _lock, _background
    _lock = threading.Lock()
    _pools.clear()
    _background = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _check_shapes(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]], reference_points: torch.Tensor,
                  sampling_offsets: torch.Tensor, attention_weights: torch.Tensor) -> None:
    batch, rows, heads, _ = value.shape
    levels = len(spatial_shapes)
    queries = sampling_offsets.shape[1]
    if rows != sum(height * width for height, width in spatial_shapes):
        raise ValueError(f"value has {rows} rows but the levels {list(spatial_shapes)} have "
                         f"{sum(h * w for h, w in spatial_shapes)}")
    if sampling_offsets.dim() != 6 or tuple(sampling_offsets.shape[:4]) != (batch, queries, heads, levels) \
            or sampling_offsets.shape[5] != 2:
        raise ValueError(f"sampling_offsets {tuple(sampling_offsets.shape)} is not (N={batch}, Lq, heads={heads}, "
                         f"levels={levels}, points, 2)")
    if tuple(attention_weights.shape) != tuple(sampling_offsets.shape[:5]):
        raise ValueError(f"attention_weights {tuple(attention_weights.shape)} is not "
                         f"{tuple(sampling_offsets.shape[:5])}")
    if reference_points.dim() != 3 or reference_points.shape[0] not in (1, batch) \
            or tuple(reference_points.shape[1:]) != (queries, 2):
        raise ValueError(f"reference_points {tuple(reference_points.shape)} is not (1 or {batch}, {queries}, 2)")


def _float32(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (a copy only when the dtype or layout differs: bf16/fp16)."""
    return tensor.detach().to(torch.float32).contiguous().numpy()


CHUNKS_PER_THREAD = 8  # the threads pull chunks of queries: a thread slowed by another process takes fewer


def run_kernel(value: np.ndarray, level_shapes: np.ndarray, reference_points: np.ndarray,
               sampling_offsets: np.ndarray, attention_weights: np.ndarray, out: np.ndarray,
               threads: int | None = None) -> None:
    """The kernel on numpy arrays (the OpenVINO operation calls this on its own buffers): writes
    ``out (N, Lq, heads, head_dim)``, the queries shared out between ``threads`` (this one included)."""
    module = _loaded_kernel()
    level_shapes = np.ascontiguousarray(level_shapes, dtype=np.int64).reshape(-1, 2)
    level_starts = np.concatenate(([0], np.cumsum(level_shapes[:, 0] * level_shapes[:, 1])[:-1])).astype(np.int64)
    args = (value, level_shapes, level_starts, reference_points, sampling_offsets, attention_weights, out)
    rows = out.shape[0] * out.shape[1]
    threads = max(1, min(threads or sampling_threads(), rows // module.QUERY_BLOCK or 1))
    if threads == 1:
        module.sample_rows(*args, 0, rows)
        return
    bounds = np.linspace(0, rows, threads * CHUNKS_PER_THREAD + 1).astype(np.int64).tolist()
    chunks = itertools.count()  # next() on it is atomic under the GIL

    def work() -> None:
        while (chunk := next(chunks)) < len(bounds) - 1:
            module.sample_rows(*args, bounds[chunk], bounds[chunk + 1])  # releases the GIL

    helpers = [_pool(threads - 1).submit(work) for _ in range(threads - 1)]
    work()  # this thread works too
    for helper in helpers:
        helper.result()


def fused_deformable_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[tuple[int, int]],
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Drop-in for ``deformable_sample`` on CPU tensors, without autograd (fp32 accumulation;
    bf16/fp16 inputs are read as fp32, the result has ``value``'s dtype)."""
    tensors = (value, reference_points, sampling_offsets, attention_weights)
    if any(t.device.type != "cpu" for t in tensors):
        raise ValueError("fused_deformable_sample runs on CPU tensors; use deformable_sample elsewhere")
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise RuntimeError("fused_deformable_sample has no backward: use deformable_sample for training")
    shapes = [(int(height), int(width)) for height, width in spatial_shapes]
    _check_shapes(value, shapes, reference_points, sampling_offsets, attention_weights)
    batch, _, heads, head_dim = value.shape
    queries = sampling_offsets.shape[1]
    out = torch.empty(batch, queries, heads * head_dim, dtype=torch.float32)
    if out.numel():
        run_kernel(_float32(value), np.asarray(shapes, np.int64), _float32(reference_points),
                   _float32(sampling_offsets), _float32(attention_weights),
                   out.numpy().reshape(batch, queries, heads, head_dim))
    return out if value.dtype == torch.float32 else out.to(value.dtype)
