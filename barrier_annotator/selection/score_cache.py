"""Scores already computed, one JSON line per frame: what makes scoring resumable.

``<output>/scores/<scorer identity>.jsonl`` holds the scores of one model + scorer settings (see
:meth:`~.scorer.FrameScorer.identity`), keyed by the frame's content hash, so a renamed or
re-exported frame is not scored again and another model never reuses them. Lines are appended and
flushed as frames are scored; a run killed mid-line leaves a torn last line, which loading drops
(and cuts off before appending), so the file only ever holds complete scores.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "barrier-annotator/frame-score-v1"
SCORE_DECIMALS = 6
"""Signals and uncertainty are kept to this many decimals, in the cache and in fresh scores alike."""


@dataclass(frozen=True)
class FrameScore:
    """One frame's scores: content hash, size, uncertainty signals and their mean, embedding, and
    the instances the model keeps at the threshold (per class)."""

    key: str
    width: int
    height: int
    signals: dict[str, float]
    uncertainty: float
    embedding: np.ndarray
    instances: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "width": self.width, "height": self.height,
                "signals": {k: round(float(v), SCORE_DECIMALS) for k, v in self.signals.items()},
                "uncertainty": round(float(self.uncertainty), SCORE_DECIMALS),
                "embedding": base64.b64encode(self.embedding.astype("<f4").tobytes()).decode("ascii"),
                "instances": dict(self.instances)}

    @classmethod
    def from_json(cls, data: Any) -> FrameScore:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a frame score")
        embedding = np.frombuffer(base64.b64decode(data["embedding"], validate=True), dtype="<f4").astype(np.float32)
        if embedding.size == 0 or not np.isfinite(embedding).all():
            raise ValueError("empty or non-finite embedding")
        return cls(str(data["key"]), int(data["width"]), int(data["height"]),
                   {str(k): float(v) for k, v in data["signals"].items()}, float(data["uncertainty"]), embedding,
                   {str(k): int(v) for k, v in data["instances"].items()})


class ScoreCache:
    """Append-only scores of one scorer identity; ``scores`` maps content hash -> :class:`FrameScore`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scores: dict[str, FrameScore] = {}
        self._handle: Any = None
        self._unsynced = 0
        self._load()

    def _load(self) -> None:
        """Read every complete line; cut the file after the last good one (a torn write)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        good_end = 0
        position = 0
        dropped = 0
        for line in data.splitlines(keepends=True):
            position += len(line)
            if not line.endswith(b"\n"):
                dropped += 1  # the torn last line of a killed run
                break
            try:
                score = FrameScore.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                dropped += 1
                logger.warning("%s: an unreadable line at byte %d is ignored", self.path, position - len(line))
                continue
            self.scores[score.key] = score
            good_end = position
        if good_end < len(data):
            with open(self.path, "r+b") as handle:
                handle.truncate(good_end)
            logger.info("%s: dropped %d incomplete line(s) left by an interrupted run", self.path, dropped)

    def __contains__(self, key: str) -> bool:
        return key in self.scores

    def add(self, score: FrameScore) -> None:
        """Append one score (flushed to the OS now, synced to disk every few dozen)."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "ab")  # noqa: SIM115 - held until close()
        self._handle.write(json.dumps(score.to_json(), separators=(",", ":")).encode() + b"\n")
        self._handle.flush()
        self.scores[score.key] = score
        self._unsynced += 1
        if self._unsynced >= 64:
            os.fsync(self._handle.fileno())
            self._unsynced = 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
