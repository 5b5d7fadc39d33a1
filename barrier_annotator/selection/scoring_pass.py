"""Scoring every frame of a pool, resumably: cached scores are reused, new ones appended as they come.

Frames are read and hashed ahead on background threads (decoded only when their hash has no
cached score). A frame that cannot be read or decoded, or on which the model fails, is listed with
its reason and skipped; the others are scored. Frames with the same content are scored once and
only the first is a candidate (the others are listed as duplicates).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from mask2former.io import ImageDecodeError, decode_image

from ..labelling.prefetch import prefetch
from .frames import Frame, FramePool, content_key
from .score_cache import SCORE_DECIMALS, FrameScore, ScoreCache
from .scorer import FrameScorer

logger = logging.getLogger(__name__)

SKIP_REASONS = {
    "bad_name": "image name is not a plain relative path",
    "unreadable": "missing, unreadable or not an image",
    "inference_failed": "the model failed on it",
}


@dataclass(frozen=True)
class Scored:
    frame: Frame
    score: FrameScore


@dataclass
class ScoredPool:
    """Scored candidates and labelled frames, frames skipped (reason -> messages) and duplicates."""

    candidates: list[Scored] = field(default_factory=list)
    labelled: list[Scored] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    reused: int = 0
    scored: int = 0
    seconds: float = 0.0

    def skip(self, reason: str, message: str) -> None:
        self.skipped.setdefault(reason, []).append(message)

    @property
    def skipped_count(self) -> int:
        return sum(len(items) for items in self.skipped.values())


@dataclass(frozen=True)
class _Read:
    key: str
    data: bytes
    cached: bool


def _reader(cache: ScoreCache):
    def read(job: tuple[Frame, bool]) -> _Read:
        frame = job[0]
        try:
            data = frame.path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(f"cannot read {frame.path}: {error.strerror or error}") from None
        key = content_key(data)
        return _Read(key, data, key in cache)
    return read


def score_frame(scorer: FrameScorer, key: str, data: bytes) -> FrameScore:
    """Decode and score one frame (ImageDecodeError for a bad image)."""
    image = decode_image(data)
    result = scorer.score(image)
    counts = Counter(result.instances.labels)
    # at the precision the cache keeps: a fresh score and a cached one rank alike (a resumed run chooses
    # exactly what an uninterrupted one would)
    signals = {name: round(float(value), SCORE_DECIMALS) for name, value in result.signals.items()}
    return FrameScore(key, int(image.shape[1]), int(image.shape[0]), signals,
                      round(float(result.uncertainty), SCORE_DECIMALS), result.embedding.astype(np.float32),
                      dict(sorted(counts.items())))


def score_pool(scorer: FrameScorer, pool: FramePool, cache: ScoreCache, *, workers: int = 2,
               progress: bool | None = None) -> ScoredPool:
    """Scores of every frame of ``pool`` (candidates, then labelled frames), from ``cache`` or the model."""
    started = time.perf_counter()
    result = ScoredPool()
    for reason, items in pool.problems.items():
        for item in items:
            result.skip(reason, item)
    seen: dict[str, str] = {}
    jobs = [(frame, False) for frame in pool.candidates] + [(frame, True) for frame in pool.labelled]
    bar = tqdm(total=len(jobs), unit="frame", desc="scoring", disable=None if progress is None else not progress)
    read = _reader(cache)
    try:
        for loaded in prefetch(jobs, read, workers=workers, ahead=8):
            frame, labelled = loaded.item
            bar.update(1)
            if loaded.error is not None:
                result.skip("unreadable", f"{frame.name}: {loaded.error}")
                logger.warning("skipping %s: %s", frame.name, loaded.error)
                continue
            item = loaded.value
            if item.cached:
                score = cache.scores[item.key]
                result.reused += 1
            else:
                try:
                    score = score_frame(scorer, item.key, item.data)
                except ImageDecodeError as error:
                    result.skip("unreadable", f"{frame.name}: {error}")
                    logger.warning("skipping %s: %s", frame.name, error)
                    continue
                except Exception as error:  # one frame must not stop the others
                    result.skip("inference_failed", f"{frame.name}: {type(error).__name__}: {error}")
                    logger.error("model failed on %s: %s", frame.name, error)
                    continue
                cache.add(score)
                result.scored += 1
            if item.key in seen and not labelled:
                result.duplicates.append(f"{frame.name}: same content as {seen[item.key]}")
                continue
            seen.setdefault(item.key, frame.name)
            (result.labelled if labelled else result.candidates).append(Scored(frame, score))
    finally:
        bar.close()
        cache.close()
    result.seconds = time.perf_counter() - started
    return result
