"""Training scalars: windowed medians for logs, ``metrics.json`` lines, ETA.

``metrics.json`` is detectron2's JSON-lines file: training lines (``iteration``, ``total_loss``,
``loss_*``, ``lr``, ``time``, ``data_time``, ``eta_seconds``) every few iterations and evaluation
lines (``iteration``, ``segm/AP``, ...) at each evaluation. Every write goes through
:func:`barrier_annotator.training.evaluation.write_metrics` (read, append, atomic replace), so no writer ever holds
a stale handle on it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import defaultdict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mask2former.utils import atomic_open, dumps_json

from .evaluation import write_metrics

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


class ScalarHistory:
    """Recent values of each scalar (window medians smooth the noisy per-batch losses)."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self._values: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self._latest: dict[str, float] = {}

    def put(self, **values: float) -> None:
        for name, value in values.items():
            self._values[name].append(float(value))
            self._latest[name] = float(value)

    def median(self, name: str) -> float:
        values = self._values.get(name)
        return statistics.median(values) if values else math.nan

    def latest(self, name: str) -> float:
        return self._latest.get(name, math.nan)

    def names(self) -> list[str]:
        return list(self._values)

    def smoothed(self) -> dict[str, float]:
        return {name: self.median(name) for name in self._values}


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def write_training_line(path: str | Path, iteration: int, values: Mapping[str, float]) -> None:
    """One training line: smoothed losses, lr and timings at the 0-based ``iteration``."""
    write_metrics(path, {k: float(v) for k, v in values.items()}, iteration=iteration, prefix="")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All JSON lines of ``metrics.json`` (an unreadable line is skipped with a warning)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            logger.warning("%s:%d is not JSON; ignored", path, number)
    return lines


def truncate_metrics(path: str | Path, start_iter: int) -> None:
    """Drop lines at or after ``start_iter``: a resumed run rewrites them, curves must not zigzag."""
    path = Path(path)
    lines = read_metrics(path)
    kept = [line for line in lines if int(line.get("iteration", -1)) < start_iter]
    if len(kept) == len(lines):
        return
    with atomic_open(path, "w") as handle:
        for line in kept:
            handle.write(dumps_json(line) + "\n")
    logger.info("%s: dropped %d lines from iteration %d on (written again by this run)", path,
                len(lines) - len(kept), start_iter)
