"""Which frames to label next: random, uncertainty, diversity, hybrid. All seeded, all deterministic.

- ``random``: the baseline, a seeded permutation.
- ``uncertainty``: the most uncertain frames first. On footage full of near-duplicates this tends
  to spend the whole batch on one hard scene, frame after frame.
- ``diversity``: k-center greedy on the embeddings: each pick is the frame farthest from everything
  labelled or picked so far (Sener & Savarese's core-set selection); a near-duplicate of a picked
  frame is at distance ~0 and comes last.
- ``hybrid``: uncertain frames, no two near-duplicates: each pick maximises
  ``uncertainty x distance to the nearest labelled or picked frame``, so an uncertain frame wins
  unless a near copy of it is already in, and a frame the model is sure of needs to be far away.

Ties are broken by a seeded random order, so the same inputs and seed give the same picks.
Embeddings are unit vectors (:func:`~.scorer.pool_embedding`); distances are Euclidean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("random", "uncertainty", "diversity", "hybrid")
_CHUNK = 4096


@dataclass(frozen=True)
class Pick:
    """One chosen frame: its index in the candidates, rank (1 = first), and why."""

    index: int
    rank: int
    reason: str
    distance: float | None = None  # to the nearest labelled or earlier-picked frame, when known
    nearest: int | None = None     # that frame: a candidate index, or -1 - i for labelled frame i


def min_distances(points: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``points``: the distance to the nearest row of ``others`` and its index
    (``inf`` and -1 when ``others`` is empty); chunked, so memory stays bounded."""
    distances = np.full(len(points), np.inf, dtype=np.float64)
    nearest = np.full(len(points), -1, dtype=np.int64)
    if len(others) == 0 or len(points) == 0:
        return distances, nearest
    points64 = points.astype(np.float64)
    squared = (points64 ** 2).sum(1)
    for start in range(0, len(others), _CHUNK):
        block = others[start:start + _CHUNK].astype(np.float64)
        d2 = squared[:, None] + (block ** 2).sum(1)[None, :] - 2 * points64 @ block.T
        best = d2.argmin(1)
        value = np.sqrt(np.maximum(d2[np.arange(len(points)), best], 0))
        better = value < distances
        distances[better], nearest[better] = value[better], best[better] + start
    return distances, nearest


def _tiebreak(count: int, seed: int) -> np.ndarray:
    """A seeded random rank per candidate: the last sort key everywhere."""
    return np.random.default_rng(seed).permutation(count)


def _greedy(count: int, embeddings: np.ndarray, labelled: np.ndarray, weights: np.ndarray | None,
            seed: int) -> list[tuple[int, float | None, int | None]]:
    """k-center greedy, optionally weighted: argmax of ``weight x distance to the nearest chosen``.

    With nothing labelled the first pick has no distance: the heaviest frame (diversity: the seeded
    first of the order), the rest follow from it.
    """
    n = len(embeddings)
    order = _tiebreak(n, seed)
    distances, nearest = min_distances(embeddings, labelled)
    nearest = np.where(nearest >= 0, -1 - nearest, 0)  # labelled frame i -> -1 - i
    weight = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    available = np.ones(n, dtype=bool)
    picks: list[tuple[int, float | None, int | None]] = []
    for _ in range(min(count, n)):
        # nothing to be far from yet: the first pick goes by weight alone
        gain = weight.copy() if not picks and len(labelled) == 0 else distances * weight
        gain = np.where(available, gain, -np.inf)
        best_gain = gain.max()
        tied = np.flatnonzero(gain == best_gain)
        index = int(tied[np.argmin(order[tied])])
        known = np.isfinite(distances[index])
        picks.append((index, float(distances[index]) if known else None, int(nearest[index]) if known else None))
        available[index] = False
        update, _ = min_distances(embeddings, embeddings[index:index + 1])
        closer = update < distances
        distances[closer], nearest[closer] = update[closer], index
    return picks


def select(strategy: str, count: int, *, uncertainty: Sequence[float] | np.ndarray,
           embeddings: np.ndarray, labelled: np.ndarray | None = None, seed: int = 0) -> list[Pick]:
    """Pick ``count`` of the candidates (``uncertainty`` and ``embeddings`` row by row); ``labelled``
    holds the embeddings of frames already labelled (diversity and hybrid stay away from them)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    scores = np.asarray(uncertainty, dtype=np.float64)
    embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(scores), -1)
    labelled = np.zeros((0, embeddings.shape[1]), np.float32) if labelled is None else np.asarray(labelled, np.float32)
    n = len(scores)
    if strategy == "random":
        order = _tiebreak(n, seed)[: min(count, n)]
        return [Pick(int(i), rank, "random pick (baseline)") for rank, i in enumerate(order, start=1)]
    if strategy == "uncertainty":
        order = np.lexsort((_tiebreak(n, seed), -scores))[: min(count, n)]
        return [Pick(int(i), rank, f"uncertainty {scores[i]:.3f}, rank {rank} of {n}")
                for rank, i in enumerate(order, start=1)]
    weights = None if strategy == "diversity" else np.maximum(scores, 1e-6)
    picks = []
    for rank, (index, distance, nearest) in enumerate(_greedy(count, embeddings, labelled, weights, seed), start=1):
        far = "no labelled or picked frame yet" if distance is None else \
            f"distance {distance:.3f} to the nearest labelled or picked frame"
        if strategy == "diversity":
            reason = f"farthest from what is labelled or picked: {far}"
        else:
            reason = f"uncertainty {scores[index]:.3f} x novelty ({far})"
        picks.append(Pick(index, rank, reason, distance, nearest))
    return picks
