"""Scores one frame with the deployed model: uncertainty signals, an embedding, and its instances.

One network pass per frame (two with the flip check), batch size 1: a frame's scores never depend
on which frames shared its batch (padding), so a resumed run or another order gives the same
numbers. Resize, normalisation and post-processing are the predictor's, so the instances are what
``barrier-label`` would write (they become the pre-labels of a created task).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from mask2former.io import ImageInput, as_rgb_array
from mask2former.postprocess import ResizeGeometry, instances_from_outputs
from mask2former.predictor import Predictor
from mask2former.structures import Instances

from .network import FeatureRunner, feature_runner
from .uncertainty import UncertaintySettings, combine, flip_disagreement, frame_signals, valid_region

SCORER_VERSION = 1
"""Part of the score cache's identity: bump when a signal or the embedding is computed differently."""


@dataclass(frozen=True)
class ScorerSettings:
    """``flip``: the test-time-augmentation check (a second pass on the mirror image)."""

    uncertainty: UncertaintySettings = field(default_factory=UncertaintySettings)
    flip: bool = False


@dataclass(frozen=True)
class FrameResult:
    """What scoring one frame gives: signals, uncertainty, embedding and the predicted instances."""

    signals: dict[str, float]
    uncertainty: float
    embedding: np.ndarray
    instances: Instances


def pool_embedding(features: torch.Tensor, input_size: tuple[int, int], padded_size: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` features -> unit vector: the global mean and a 2x2 grid of means over the frame's
    own cells (layout matters: the same rail on the left or the right is another view), each part
    normalised, so neither dominates."""
    cells = valid_region(features, input_size, padded_size).float()
    mean = cells.mean(dim=(-2, -1))
    grid = F.adaptive_avg_pool2d(cells[None], (2, 2))[0].flatten()
    parts = [part / part.norm().clamp(min=1e-12) for part in (mean, grid)]
    vector = torch.cat(parts) / np.sqrt(len(parts))
    return vector.cpu().numpy().astype(np.float32)


class FrameScorer:
    """Uncertainty and embedding of frames under ``predictor``'s model, backend and threshold."""

    def __init__(self, predictor: Predictor, settings: ScorerSettings | None = None,
                 runner: FeatureRunner | None = None) -> None:
        self.predictor = predictor
        threshold = predictor.score_threshold
        base = settings or ScorerSettings()
        self.settings = ScorerSettings(UncertaintySettings(threshold, base.uncertainty.band, base.uncertainty.top),
                                       base.flip)
        self.runner = runner or feature_runner(predictor)

    @property
    def description(self) -> str:
        return f"{self.runner.description}{', flip check' if self.settings.flip else ''}"

    def identity(self, model: dict[str, Any]) -> str:
        """Digest of everything a cached score depends on: the model (``model_identity``), threshold,
        detections kept, scorer version and settings."""
        payload = {"model": model, "threshold": self.predictor.score_threshold,
                   "detections": self.predictor.max_detections, "version": SCORER_VERSION,
                   "band": self.settings.uncertainty.band, "top": self.settings.uncertainty.top,
                   "flip": self.settings.flip}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def _run(self, image: np.ndarray) -> tuple[Instances, dict[str, float], np.ndarray]:
        predictor = self.predictor
        with torch.inference_mode():
            batch, sizes = predictor.network_input([image])
            logits, masks, features = self.runner(batch)
            padded = (int(batch.shape[-2]), int(batch.shape[-1]))
            geometry = ResizeGeometry(input_size=sizes[0], padded_size=padded, output_size=image.shape[:2])
            signals = frame_signals(logits[0], valid_region(masks[0], sizes[0], padded), self.settings.uncertainty)
            embedding = pool_embedding(features[0], sizes[0], padded)
            instances = instances_from_outputs(logits[0], masks[0], geometry, predictor.class_names,
                                               score_threshold=predictor.score_threshold,
                                               top_k=predictor.max_detections)
        return instances, signals, embedding

    def instances(self, image: ImageInput) -> Instances:
        """The frame's instances alone (one pass): what scoring it kept."""
        return self._run(as_rgb_array(image))[0]

    def score(self, image: ImageInput) -> FrameResult:
        """One frame (RGB array, path or encoded bytes)."""
        array = as_rgb_array(image)
        instances, signals, embedding = self._run(array)
        if self.settings.flip:
            mirrored, _, _ = self._run(np.ascontiguousarray(array[:, ::-1]))
            back = Instances.from_masks(mirrored.masks[:, :, ::-1], mirrored.scores, mirrored.class_ids,
                                        mirrored.class_names)
            signals["flip_disagreement"] = flip_disagreement(instances, back)
        return FrameResult(signals, combine(signals), embedding, instances)
