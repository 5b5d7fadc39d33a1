"""What a labelling run did, for the closing log lines, ``summary.json`` and the exit code."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SKIP_REASONS = {
    "bad_name": "image name is not a plain relative path",
    "missing": "listed in the annotation file but not found under images/",
    "unreadable": "not a readable image",
    "size_mismatch": "image size differs from the annotation file",
    "inference_failed": "the model failed on it",
}


@dataclass
class LabelSummary:
    """Counts of one run. ``skipped`` maps a reason (see :data:`SKIP_REASONS`) to messages."""

    annotations: Path
    images: int = 0
    predicted: int = 0
    reused: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    shapes: Counter[str] = field(default_factory=Counter)
    not_written: Counter[str] = field(default_factory=Counter)
    kept_input_shapes: int = 0
    replaced_shapes: int = 0
    seconds: float = 0.0
    predict_seconds: float = 0.0
    inference_seconds: float = 0.0

    def skip(self, reason: str, name: str, message: str) -> None:
        self.skipped.setdefault(reason, []).append(f"{name}: {message}")

    @property
    def skipped_count(self) -> int:
        return sum(len(items) for items in self.skipped.values())

    @property
    def exit_code(self) -> int:
        """0: every image has its predictions; 1: some images were skipped."""
        return 1 if self.skipped_count else 0

    @property
    def seconds_per_image(self) -> float:
        """Wall time of the prediction loop (loading, model, writing) per predicted image."""
        return self.predict_seconds / self.predicted if self.predicted else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "annotations": str(self.annotations),
            "images": self.images,
            "predicted": self.predicted,
            "reused": self.reused,
            "skipped": {reason: items for reason, items in sorted(self.skipped.items())},
            "shapes_per_class": dict(sorted(self.shapes.items())),
            "predictions_not_written": dict(sorted(self.not_written.items())),
            "kept_input_shapes": self.kept_input_shapes,
            "replaced_shapes": self.replaced_shapes,
            "seconds": round(self.seconds, 3),
            "seconds_per_image": round(self.seconds_per_image, 4),
            "inference_seconds_per_image": round(self.inference_seconds / self.predicted, 4) if self.predicted else 0.0,
            "exit_code": self.exit_code,
        }

    def log(self, logger: logging.Logger, *, show: int = 5) -> None:
        """Closing summary: a few lines a person reads at the end of a long run."""
        logger.info("images: %d in the annotation file, %d predicted, %d kept from an earlier run, %d skipped",
                    self.images, self.predicted, self.reused, self.skipped_count)
        for reason, items in sorted(self.skipped.items()):
            logger.warning("skipped (%s): %d image(s), %s", reason, len(items), SKIP_REASONS.get(reason, reason))
            for item in items[:show]:
                logger.warning("  %s", item)
            if len(items) > show:
                logger.warning("  ... and %d more (see summary.json)", len(items) - show)
        per_class = ", ".join(f"{label} {count}" for label, count in sorted(self.shapes.items())) or "none"
        logger.info("shapes written: %d (%s); input shapes kept: %d; earlier predictions replaced: %d",
                    sum(self.shapes.values()), per_class, self.kept_input_shapes, self.replaced_shapes)
        for note, count in sorted(self.not_written.items()):
            logger.warning("predictions not written: %d (%s)", count, note)
        if self.predicted:
            logger.info("time: %.1f s total, %.3f s per image (model %.3f s per image)", self.seconds,
                        self.seconds_per_image, self.inference_seconds / self.predicted)
        logger.info("annotations for CVAT (Upload annotations, format 'CVAT 1.1'): %s", self.annotations)
