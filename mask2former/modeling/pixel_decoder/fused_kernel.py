"""The fused multi-scale deformable-attention kernel, compiled by numba (imports numba: only
``fused_sampling`` imports this module, and copes with its absence).

One pass per block of queries: for every (query, head, level, point) the four bilinear corners and
their weights (attention weight x bilinear weight, zero for a corner outside the map, as
``grid_sample(padding_mode="zeros", align_corners=False)``) are computed on the fly into small
per-thread tables, then each (query, head) accumulates its corners straight into its ``head_dim``
output channels. ``value`` is read where the projection wrote it, ``(N, sum HW, heads, head_dim)``;
nothing of the size of the sampled tensor is ever materialised.

How the loops are written is what makes them fast, so it is deliberate:

- the corner tables are computed in one flat loop over ``heads * levels * points`` with the
  per-level sizes pre-tiled into arrays (no branches, no division, non-negative indices), which
  LLVM turns into AVX-512/AVX2 code;
- the accumulation keeps 32 (or 16) channels in as many scalar accumulators, which LLVM's SLP
  vectoriser packs into 512-bit (or 256-bit) registers: a plain ``for c in range(head_dim)``
  over an output row would load and store the row at every corner, because LLVM cannot prove
  that ``out`` and ``value`` do not overlap. Each point adds its four corners as a tree, so the loop-carried chain
  is one add per point. numba leaves the SLP vectoriser off by default: ``compile_kernel`` turns it
  on for this kernel's compilation only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np
from numba import njit, types

logger = logging.getLogger(__name__)

QUERY_BLOCK = 32  # queries whose corner tables are built before they are accumulated
_OPTIONS = {"nogil": True, "boundscheck": False, "error_model": "numpy", "fastmath": {"contract"}}


def kernel_cache_dir() -> Path:
    """Where the compiled kernel is cached: numba's own ``$NUMBA_CACHE_DIR`` when set (the CPU
    function's image sets it and fills it at build time), else ``<product cache>/numba-kernels``.

    numba's own default writes next to this source file, which a site-packages install may not
    allow (then it would fall back to ``~/.cache/numba``, another place per user)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    from ...utils import default_cache_dir

    return default_cache_dir() / "numba-kernels"


def _jit(function):  # a decorator over numba's own types
    """``njit`` with the on-disk cache in :func:`kernel_cache_dir`; in memory only when no cache
    directory numba tries is writable (a compile per process, logged)."""
    previous = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(kernel_cache_dir())
    try:
        return njit(cache=True, **_OPTIONS)(function)
    except RuntimeError as error:  # numba: "cannot cache function ...: no locator available"
        logger.warning("no writable cache directory for the fused kernel (%s): it compiles in every process", error)
        return njit(**_OPTIONS)(function)
    finally:
        numba.config.CACHE_DIR = previous


@_jit
def _corners(rx, ry, offsets, weights, widths, heights, width_ints, height_ints, level_starts, head_of,
             row_base, heads, blocks, i00, i01, i10, i11, w00, w01, w10, w11):
    """Corner rows and weights of one query's ``heads * levels * points`` samples (flat index ``j``)."""
    one, half, two, zero = np.float32(1.0), np.float32(0.5), np.float32(2.0), np.float32(0.0)
    for j in range(widths.shape[0]):
        width, height = widths[j], heights[j]
        # grid_sample's pixel position (align_corners=False): reference * size + offset - 0.5; clamped
        # to [-2, size + 1] (all corners out, weight 0, as any farther point) so floor is a truncation
        x = min(max(rx * width + offsets[2 * j] - half, -two), width + one)
        y = min(max(ry * height + offsets[2 * j + 1] - half, -two), height + one)
        x_shift, y_shift = np.int64(x + two), np.int64(y + two)  # floor(x) + 2, as x + 2 >= 0
        fx, fy = x + two - np.float32(x_shift), y + two - np.float32(y_shift)
        x0, y0 = x_shift - 2, y_shift - 2
        w, h = width_ints[j], height_ints[j]
        attention = weights[j]
        wx0 = one - fx if (x0 >= 0) & (x0 < w) else zero
        wx1 = fx if (x0 >= -1) & (x0 < w - 1) else zero
        wy0 = (one - fy) * attention if (y0 >= 0) & (y0 < h) else zero
        wy1 = fy * attention if (y0 >= -1) & (y0 < h - 1) else zero
        cx0, cx1 = min(max(x0, 0), w - 1), min(max(x0 + 1, 0), w - 1)
        row0 = row_base + level_starts[j] + min(max(y0, 0), h - 1) * w
        row1 = row_base + level_starts[j] + min(max(y0 + 1, 0), h - 1) * w
        head = head_of[j]
        i00[j] = ((row0 + cx0) * heads + head) * blocks
        i01[j] = ((row0 + cx1) * heads + head) * blocks
        i10[j] = ((row1 + cx0) * heads + head) * blocks
        i11[j] = ((row1 + cx1) * heads + head) * blocks
        w00[j], w01[j], w10[j], w11[j] = wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1


@_jit
def _accumulate16(v, out, out_row, j0, j1, i00, i01, i10, i11, w00, w01, w10, w11, block):
    """16 channels of one (query, head): the weighted corners of samples ``j0..j1``."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = np.float32(0.0)
    for j in range(j0, j1):
        p00, p01, p10, p11 = w00[j], w01[j], w10[j], w11[j]
        r00, r01, r10, r11 = i00[j] + block, i01[j] + block, i10[j] + block, i11[j] + block
        a0 += (p00 * v[r00, 0] + p01 * v[r01, 0]) + (p10 * v[r10, 0] + p11 * v[r11, 0])
        a1 += (p00 * v[r00, 1] + p01 * v[r01, 1]) + (p10 * v[r10, 1] + p11 * v[r11, 1])
        a2 += (p00 * v[r00, 2] + p01 * v[r01, 2]) + (p10 * v[r10, 2] + p11 * v[r11, 2])
        a3 += (p00 * v[r00, 3] + p01 * v[r01, 3]) + (p10 * v[r10, 3] + p11 * v[r11, 3])
        a4 += (p00 * v[r00, 4] + p01 * v[r01, 4]) + (p10 * v[r10, 4] + p11 * v[r11, 4])
        a5 += (p00 * v[r00, 5] + p01 * v[r01, 5]) + (p10 * v[r10, 5] + p11 * v[r11, 5])
        a6 += (p00 * v[r00, 6] + p01 * v[r01, 6]) + (p10 * v[r10, 6] + p11 * v[r11, 6])
        a7 += (p00 * v[r00, 7] + p01 * v[r01, 7]) + (p10 * v[r10, 7] + p11 * v[r11, 7])
        a8 += (p00 * v[r00, 8] + p01 * v[r01, 8]) + (p10 * v[r10, 8] + p11 * v[r11, 8])
        a9 += (p00 * v[r00, 9] + p01 * v[r01, 9]) + (p10 * v[r10, 9] + p11 * v[r11, 9])
        a10 += (p00 * v[r00, 10] + p01 * v[r01, 10]) + (p10 * v[r10, 10] + p11 * v[r11, 10])
        a11 += (p00 * v[r00, 11] + p01 * v[r01, 11]) + (p10 * v[r10, 11] + p11 * v[r11, 11])
        a12 += (p00 * v[r00, 12] + p01 * v[r01, 12]) + (p10 * v[r10, 12] + p11 * v[r11, 12])
        a13 += (p00 * v[r00, 13] + p01 * v[r01, 13]) + (p10 * v[r10, 13] + p11 * v[r11, 13])
        a14 += (p00 * v[r00, 14] + p01 * v[r01, 14]) + (p10 * v[r10, 14] + p11 * v[r11, 14])
        a15 += (p00 * v[r00, 15] + p01 * v[r01, 15]) + (p10 * v[r10, 15] + p11 * v[r11, 15])
    out[out_row, 0], out[out_row, 1], out[out_row, 2], out[out_row, 3] = a0, a1, a2, a3
    out[out_row, 4], out[out_row, 5], out[out_row, 6], out[out_row, 7] = a4, a5, a6, a7
    out[out_row, 8], out[out_row, 9], out[out_row, 10], out[out_row, 11] = a8, a9, a10, a11
    out[out_row, 12], out[out_row, 13], out[out_row, 14], out[out_row, 15] = a12, a13, a14, a15


@_jit
def _accumulate32(v, out, out_row, j0, j1, i00, i01, i10, i11, w00, w01, w10, w11, block):
    """32 channels of one (query, head) (Swin-T/L: 8 heads x 32): one pass over the corner tables
    instead of two of 16 channels, about a third faster."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = a12 = a13 = a14 = a15 = np.float32(0.0)
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = b9 = b10 = b11 = b12 = b13 = b14 = b15 = np.float32(0.0)
    for j in range(j0, j1):
        p00, p01, p10, p11 = w00[j], w01[j], w10[j], w11[j]
        r00, r01, r10, r11 = i00[j] + block, i01[j] + block, i10[j] + block, i11[j] + block
        a0 += (p00 * v[r00, 0] + p01 * v[r01, 0]) + (p10 * v[r10, 0] + p11 * v[r11, 0])
        a1 += (p00 * v[r00, 1] + p01 * v[r01, 1]) + (p10 * v[r10, 1] + p11 * v[r11, 1])
        a2 += (p00 * v[r00, 2] + p01 * v[r01, 2]) + (p10 * v[r10, 2] + p11 * v[r11, 2])
        a3 += (p00 * v[r00, 3] + p01 * v[r01, 3]) + (p10 * v[r10, 3] + p11 * v[r11, 3])
        a4 += (p00 * v[r00, 4] + p01 * v[r01, 4]) + (p10 * v[r10, 4] + p11 * v[r11, 4])
        a5 += (p00 * v[r00, 5] + p01 * v[r01, 5]) + (p10 * v[r10, 5] + p11 * v[r11, 5])
        a6 += (p00 * v[r00, 6] + p01 * v[r01, 6]) + (p10 * v[r10, 6] + p11 * v[r11, 6])
        a7 += (p00 * v[r00, 7] + p01 * v[r01, 7]) + (p10 * v[r10, 7] + p11 * v[r11, 7])
        a8 += (p00 * v[r00, 8] + p01 * v[r01, 8]) + (p10 * v[r10, 8] + p11 * v[r11, 8])
        a9 += (p00 * v[r00, 9] + p01 * v[r01, 9]) + (p10 * v[r10, 9] + p11 * v[r11, 9])
        a10 += (p00 * v[r00, 10] + p01 * v[r01, 10]) + (p10 * v[r10, 10] + p11 * v[r11, 10])
        a11 += (p00 * v[r00, 11] + p01 * v[r01, 11]) + (p10 * v[r10, 11] + p11 * v[r11, 11])
        a12 += (p00 * v[r00, 12] + p01 * v[r01, 12]) + (p10 * v[r10, 12] + p11 * v[r11, 12])
        a13 += (p00 * v[r00, 13] + p01 * v[r01, 13]) + (p10 * v[r10, 13] + p11 * v[r11, 13])
        a14 += (p00 * v[r00, 14] + p01 * v[r01, 14]) + (p10 * v[r10, 14] + p11 * v[r11, 14])
        a15 += (p00 * v[r00, 15] + p01 * v[r01, 15]) + (p10 * v[r10, 15] + p11 * v[r11, 15])
        b0 += (p00 * v[r00, 16] + p01 * v[r01, 16]) + (p10 * v[r10, 16] + p11 * v[r11, 16])
        b1 += (p00 * v[r00, 17] + p01 * v[r01, 17]) + (p10 * v[r10, 17] + p11 * v[r11, 17])
        b2 += (p00 * v[r00, 18] + p01 * v[r01, 18]) + (p10 * v[r10, 18] + p11 * v[r11, 18])
        b3 += (p00 * v[r00, 19] + p01 * v[r01, 19]) + (p10 * v[r10, 19] + p11 * v[r11, 19])
        b4 += (p00 * v[r00, 20] + p01 * v[r01, 20]) + (p10 * v[r10, 20] + p11 * v[r11, 20])
        b5 += (p00 * v[r00, 21] + p01 * v[r01, 21]) + (p10 * v[r10, 21] + p11 * v[r11, 21])
        b6 += (p00 * v[r00, 22] + p01 * v[r01, 22]) + (p10 * v[r10, 22] + p11 * v[r11, 22])
        b7 += (p00 * v[r00, 23] + p01 * v[r01, 23]) + (p10 * v[r10, 23] + p11 * v[r11, 23])
        b8 += (p00 * v[r00, 24] + p01 * v[r01, 24]) + (p10 * v[r10, 24] + p11 * v[r11, 24])
        b9 += (p00 * v[r00, 25] + p01 * v[r01, 25]) + (p10 * v[r10, 25] + p11 * v[r11, 25])
        b10 += (p00 * v[r00, 26] + p01 * v[r01, 26]) + (p10 * v[r10, 26] + p11 * v[r11, 26])
        b11 += (p00 * v[r00, 27] + p01 * v[r01, 27]) + (p10 * v[r10, 27] + p11 * v[r11, 27])
        b12 += (p00 * v[r00, 28] + p01 * v[r01, 28]) + (p10 * v[r10, 28] + p11 * v[r11, 28])
        b13 += (p00 * v[r00, 29] + p01 * v[r01, 29]) + (p10 * v[r10, 29] + p11 * v[r11, 29])
        b14 += (p00 * v[r00, 30] + p01 * v[r01, 30]) + (p10 * v[r10, 30] + p11 * v[r11, 30])
        b15 += (p00 * v[r00, 31] + p01 * v[r01, 31]) + (p10 * v[r10, 31] + p11 * v[r11, 31])
    out[out_row, 0], out[out_row, 1], out[out_row, 2], out[out_row, 3] = a0, a1, a2, a3
    out[out_row, 4], out[out_row, 5], out[out_row, 6], out[out_row, 7] = a4, a5, a6, a7
    out[out_row, 8], out[out_row, 9], out[out_row, 10], out[out_row, 11] = a8, a9, a10, a11
    out[out_row, 12], out[out_row, 13], out[out_row, 14], out[out_row, 15] = a12, a13, a14, a15
    out[out_row, 16], out[out_row, 17], out[out_row, 18], out[out_row, 19] = b0, b1, b2, b3
    out[out_row, 20], out[out_row, 21], out[out_row, 22], out[out_row, 23] = b4, b5, b6, b7
    out[out_row, 24], out[out_row, 25], out[out_row, 26], out[out_row, 27] = b8, b9, b10, b11
    out[out_row, 28], out[out_row, 29], out[out_row, 30], out[out_row, 31] = b12, b13, b14, b15


@_jit
def _accumulate_any(v, out, out_row, j0, j1, i00, i01, i10, i11, w00, w01, w10, w11, block):
    """Any channel count (``head_dim`` not a multiple of 16, e.g. the tiny test model): plain loops."""
    for channel in range(v.shape[1]):
        total = np.float32(0.0)
        for j in range(j0, j1):
            total += (w00[j] * v[i00[j] + block, channel] + w01[j] * v[i01[j] + block, channel]) + (
                w10[j] * v[i10[j] + block, channel] + w11[j] * v[i11[j] + block, channel])
        out[out_row, channel] = total


@_jit
def sample_rows(value, level_shapes, level_starts, reference_points, offsets, weights, out, begin, end):
    """``out[n, q]`` for the flat query rows ``begin <= n * Lq + q < end`` (a thread's share).

    value ``(N, S, heads, D)``, level_shapes ``(L, 2)`` (H, W), level_starts ``(L,)``,
    reference_points ``(1 or N, Lq, 2)``, offsets ``(N, Lq, heads, L, P, 2)``, weights
    ``(N, Lq, heads, L, P)``, out ``(N, Lq, heads, D)``; float32 and int64, C-contiguous.
    """
    batch, rows_per_image, heads, head_dim = value.shape
    queries, levels, points = offsets.shape[1], offsets.shape[3], offsets.shape[4]
    per_head = levels * points
    samples = heads * per_head
    unit = 32 if head_dim % 32 == 0 else 16 if head_dim % 16 == 0 else head_dim
    blocks = head_dim // unit
    v = value.reshape(-1, unit)
    o = out.reshape(-1, unit)
    flat_offsets = offsets.reshape(batch * queries, samples * 2)
    flat_weights = weights.reshape(batch * queries, samples)
    widths, heights = np.empty(samples, np.float32), np.empty(samples, np.float32)
    width_ints, height_ints = np.empty(samples, np.int64), np.empty(samples, np.int64)
    starts, head_of = np.empty(samples, np.int64), np.empty(samples, np.int64)
    for head in range(heads):
        for level in range(levels):
            for point in range(points):
                j = (head * levels + level) * points + point
                height_ints[j], width_ints[j] = level_shapes[level, 0], level_shapes[level, 1]
                heights[j], widths[j] = level_shapes[level, 0], level_shapes[level, 1]
                starts[j], head_of[j] = level_starts[level], head
    i00, i01 = np.empty((QUERY_BLOCK, samples), np.int64), np.empty((QUERY_BLOCK, samples), np.int64)
    i10, i11 = np.empty((QUERY_BLOCK, samples), np.int64), np.empty((QUERY_BLOCK, samples), np.int64)
    w00, w01 = np.empty((QUERY_BLOCK, samples), np.float32), np.empty((QUERY_BLOCK, samples), np.float32)
    w10, w11 = np.empty((QUERY_BLOCK, samples), np.float32), np.empty((QUERY_BLOCK, samples), np.float32)
    shared_reference = reference_points.shape[0] == 1
    for first in range(begin, end, QUERY_BLOCK):
        last = min(first + QUERY_BLOCK, end)
        for row in range(first, last):
            image = row // queries
            query = row - image * queries
            reference = 0 if shared_reference else image
            k = row - first
            _corners(reference_points[reference, query, 0], reference_points[reference, query, 1],
                     flat_offsets[row], flat_weights[row], widths, heights, width_ints, height_ints, starts,
                     head_of, image * rows_per_image, heads, blocks,
                     i00[k], i01[k], i10[k], i11[k], w00[k], w01[k], w10[k], w11[k])
        for row in range(first, last):
            k = row - first
            for head in range(heads):
                for block in range(blocks):
                    out_row = (row * heads + head) * blocks + block
                    if unit == 32:
                        _accumulate32(v, o, out_row, head * per_head, (head + 1) * per_head,
                                      i00[k], i01[k], i10[k], i11[k], w00[k], w01[k], w10[k], w11[k], block)
                    elif unit == 16:
                        _accumulate16(v, o, out_row, head * per_head, (head + 1) * per_head,
                                      i00[k], i01[k], i10[k], i11[k], w00[k], w01[k], w10[k], w11[k], block)
                    else:
                        _accumulate_any(v, o, out_row, head * per_head, (head + 1) * per_head,
                                        i00[k], i01[k], i10[k], i11[k], w00[k], w01[k], w10[k], w11[k], block)


def _array(dtype: types.Type, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C")


SIGNATURE = (
    _array(types.float32, 4), _array(types.int64, 2), _array(types.int64, 1), _array(types.float32, 3),
    _array(types.float32, 6), _array(types.float32, 5), _array(types.float32, 4), types.int64, types.int64,
)


@contextlib.contextmanager
def _slp_vectoriser() -> Iterator[None]:
    """numba reads this flag each time it builds its LLVM pass pipeline; it is off by default."""
    previous = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = previous


def compile_kernel() -> None:
    """Compile (or load from the disk cache) the kernel for its one signature, once per process;
    then forbid other specialisations, which would compile silently without the SLP vectoriser.
    Not thread-safe: ``fused_sampling`` calls it under its lock."""
    if sample_rows.signatures:
        return
    with _slp_vectoriser():
        sample_rows.compile(SIGNATURE)
    sample_rows.disable_compile()
    loaded = sum(sample_rows.stats.cache_hits.values()) > 0
    logger.debug("fused deformable-sampling kernel %s (cache %s)", "loaded" if loaded else "compiled",
                 kernel_cache_dir())
