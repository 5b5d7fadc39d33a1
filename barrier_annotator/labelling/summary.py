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

LEFT_ALONE_REASONS = {
    "reviewed": "a person changed the frame since this tool wrote it (--relabel-reviewed labels them again)",
    "unknown": "no record of this tool here and shapes uploaded from a file (source \"file\"): point "
               "--records-from at the earlier output folder, or --relabel-reviewed to label them anyway",
}


@dataclass
class LabelSummary:
    """Counts of one run. ``skipped`` maps a reason (see :data:`SKIP_REASONS`) to messages;
    ``left_alone`` a review state (see :data:`LEFT_ALONE_REASONS`) to the frames kept as they are."""

    annotations: Path
    images: int = 0
    predicted: int = 0
    reused: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)
    left_alone: dict[str, list[str]] = field(default_factory=dict)
    relabelled_reviewed: int = 0
    shapes: Counter[str] = field(default_factory=Counter)
    not_written: Counter[str] = field(default_factory=Counter)
    kept_input_shapes: int = 0
    replaced_shapes: int = 0
    overlays_failed: int = 0
    seconds: float = 0.0
    predict_seconds: float = 0.0
    inference_seconds: float = 0.0

    def skip(self, reason: str, name: str, message: str) -> None:
        self.skipped.setdefault(reason, []).append(f"{name}: {message}")

    def leave_alone(self, state: str, name: str) -> None:
        self.left_alone.setdefault(state, []).append(name)

    @property
    def left_alone_count(self) -> int:
        return sum(len(items) for items in self.left_alone.values())

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
            "left_alone": {state: items for state, items in sorted(self.left_alone.items())},
            "reviewed_left_alone": len(self.left_alone.get("reviewed", ())),
            "relabelled_reviewed": self.relabelled_reviewed,
            "shapes_per_class": dict(sorted(self.shapes.items())),
            "predictions_not_written": dict(sorted(self.not_written.items())),
            "kept_input_shapes": self.kept_input_shapes,
            "replaced_shapes": self.replaced_shapes,
            "overlays_failed": self.overlays_failed,
            "seconds": round(self.seconds, 3),
            "seconds_per_image": round(self.seconds_per_image, 4),
            "inference_seconds_per_image": round(self.inference_seconds / self.predicted, 4) if self.predicted else 0.0,
            "exit_code": self.exit_code,
        }

    def log(self, logger: logging.Logger, *, show: int = 5) -> None:
        """Closing summary: a few lines a person reads at the end of a long run."""
        logger.info("images: %d in the annotation file, %d predicted, %d kept from an earlier run, "
                    "%d left alone (reviewed), %d skipped", self.images, self.predicted, self.reused,
                    self.left_alone_count, self.skipped_count)
        for state, items in sorted(self.left_alone.items()):
            level = logging.INFO if state == "reviewed" else logging.WARNING  # "unknown" may surprise
            logger.log(level, "left as they are (%s): %d frame(s), %s", state, len(items),
                       LEFT_ALONE_REASONS.get(state, state))
            for item in items[:show]:
                logger.log(level, "  %s", item)
            if len(items) > show:
                logger.log(level, "  ... and %d more (see summary.json)", len(items) - show)
        if self.relabelled_reviewed:
            logger.warning("%d reviewed frame(s) labelled again (--relabel-reviewed)", self.relabelled_reviewed)
        for reason, items in sorted(self.skipped.items()):
            logger.warning("skipped (%s): %d image(s), %s", reason, len(items), SKIP_REASONS.get(reason, reason))
            for item in items[:show]:
                logger.warning("  %s", item)
            if len(items) > show:
                logger.warning("  ... and %d more (see summary.json)", len(items) - show)
        per_class = ", ".join(f"{label} {count}" for label, count in sorted(self.shapes.items())) or "none"
        logger.info("shapes written: %d (%s); input shapes kept: %d; earlier predictions replaced: %d",
                    sum(self.shapes.values()), per_class, self.kept_input_shapes, self.replaced_shapes)
        if self.overlays_failed:
            logger.warning("overlay pictures not drawn: %d (the log above says why; their annotations are written)",
                           self.overlays_failed)
        for note, count in sorted(self.not_written.items()):
            logger.warning("predictions not written: %d (%s)", count, note)
        if self.predicted:
            logger.info("time: %.1f s total, %.3f s per image (model %.3f s per image)", self.seconds,
                        self.seconds_per_image, self.inference_seconds / self.predicted)
        logger.info("annotations for CVAT (Upload annotations, format 'CVAT 1.1'): %s", self.annotations)
