"""Per-frame uncertainty from what the model computes anyway: class logits and low-resolution mask logits.

Every signal is in [0, 1], higher = the model is less sure, and is computed on the network's raw
outputs before post-processing (no extra pass), except the optional flip check:

- ``threshold_ambiguity``: how close the most undecided queries are to the score threshold. A
  query's score is estimated as the deployed one is computed (class probability times the mean
  mask probability inside its mask); a query exactly at the threshold scores 1, one ``band`` or
  more away 0; the frame takes the mean of its ``top`` most ambiguous queries.
- ``class_entropy``: normalised entropy of the class distribution (classes + "no object") of the
  candidate queries (score within ``band`` below the threshold or above): which class, or whether
  anything at all.
- ``mask_ambiguity``: of the candidate queries' mask support (probability > 0.3), the share of
  pixels between 0.3 and 0.7, weighted by the query's score: where the mask boundary is unsure.
- ``flip_disagreement`` (test-time augmentation, a second pass): 1 - mean best IoU between the
  instances of the frame and of its mirror image (mirrored back), same class; 0 when both agree.

The frame's ``uncertainty`` is the mean of the signals computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from mask2former.structures import Instances

MASK_LOW, MASK_HIGH = 0.3, 0.7
SIGNALS = ("threshold_ambiguity", "class_entropy", "mask_ambiguity", "flip_disagreement")


@dataclass(frozen=True)
class UncertaintySettings:
    """``threshold``: the deployed score threshold; ``band``: how far from it a query still counts
    as undecided; ``top``: queries averaged for ``threshold_ambiguity``."""

    threshold: float = 0.5
    band: float = 0.25
    top: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0 or self.band <= 0 or self.top < 1:
            raise ValueError(f"invalid uncertainty settings {self}")


def valid_region(mask_logits: torch.Tensor, input_size: tuple[int, int],
                 padded_size: tuple[int, int]) -> torch.Tensor:
    """The low-resolution mask logits ``(Q, h, w)`` without the batch padding (the frame's own cells)."""
    low_h, low_w = mask_logits.shape[-2:]
    rows = max(1, math.ceil(input_size[0] * low_h / padded_size[0]))
    cols = max(1, math.ceil(input_size[1] * low_w / padded_size[1]))
    return mask_logits[..., :rows, :cols]


def query_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: the estimated instance score (best class probability x mean mask probability inside
    the mask, as post-processing scores an instance) and the class distribution ``(Q, K+1)``."""
    probabilities = class_logits.float().softmax(-1)
    best = probabilities[:, :-1].max(-1).values
    mask_probabilities = mask_logits.float().sigmoid().flatten(1)
    inside = mask_probabilities > 0.5
    mask_score = (mask_probabilities * inside).sum(1) / inside.sum(1).clamp(min=1)
    return best * mask_score, probabilities


def threshold_ambiguity(scores: torch.Tensor, settings: UncertaintySettings) -> float:
    closeness = (1 - (scores - settings.threshold).abs() / settings.band).clamp(min=0)
    top = closeness.topk(min(settings.top, closeness.numel())).values
    return float(top.mean()) if top.numel() else 0.0


def _candidates(scores: torch.Tensor, settings: UncertaintySettings) -> torch.Tensor:
    return scores >= settings.threshold - settings.band


def class_entropy(scores: torch.Tensor, probabilities: torch.Tensor, settings: UncertaintySettings) -> float:
    candidates = _candidates(scores, settings)
    if not bool(candidates.any()):
        return 0.0
    chosen = probabilities[candidates].clamp(min=1e-12)
    entropy = -(chosen * chosen.log()).sum(-1) / math.log(chosen.shape[-1])
    return float(entropy.mean().clamp(0, 1))


def mask_ambiguity(scores: torch.Tensor, mask_logits: torch.Tensor, settings: UncertaintySettings) -> float:
    candidates = _candidates(scores, settings)
    if not bool(candidates.any()):
        return 0.0
    probabilities = mask_logits[candidates].float().sigmoid().flatten(1)
    support = (probabilities > MASK_LOW).sum(1)
    unsure = ((probabilities > MASK_LOW) & (probabilities < MASK_HIGH)).sum(1)
    share = unsure.float() / support.clamp(min=1).float()
    weights = scores[candidates] * (support > 0)
    if float(weights.sum()) <= 0:
        return 0.0
    return float((share * weights).sum() / weights.sum())


def frame_signals(class_logits: torch.Tensor, mask_logits: torch.Tensor, settings: UncertaintySettings
                  ) -> dict[str, float]:
    """The single-pass signals of one frame from ``class_logits (Q, K+1)`` and its unpadded
    ``mask_logits (Q, h, w)`` (see :func:`valid_region`)."""
    scores, probabilities = query_scores(class_logits, mask_logits)
    return {
        "threshold_ambiguity": threshold_ambiguity(scores, settings),
        "class_entropy": class_entropy(scores, probabilities, settings),
        "mask_ambiguity": mask_ambiguity(scores, mask_logits, settings),
    }


def _downsampled(instances: Instances, step: int) -> np.ndarray:
    return instances.masks[:, ::step, ::step]


def flip_disagreement(instances: Instances, mirrored: Instances, *, step: int = 2) -> float:
    """``mirrored``: the instances predicted on the mirror image, masks already mirrored back.

    For every instance of either side, the best IoU with a same-class instance of the other (masks
    subsampled by ``step`` for speed); 1 - the mean of those. No instance on either side: 0.
    """
    if len(instances) == 0 and len(mirrored) == 0:
        return 0.0
    a, b = _downsampled(instances, step), _downsampled(mirrored, step)
    a_flat = a.reshape(len(a), -1).astype(np.float32)
    b_flat = b.reshape(len(b), -1).astype(np.float32)
    intersection = a_flat @ b_flat.T
    union = a_flat.sum(1)[:, None] + b_flat.sum(1)[None, :] - intersection
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 0.0)
    iou = np.where(instances.class_ids[:, None] == mirrored.class_ids[None, :], iou, 0.0)
    best = np.concatenate([iou.max(1) if iou.shape[1] else np.zeros(len(a)),
                           iou.max(0) if iou.shape[0] else np.zeros(len(b))])
    return float(1.0 - best.mean())


def combine(signals: Mapping[str, float]) -> float:
    """The frame's uncertainty: the mean of the signals it has (see the module docstring)."""
    values = [float(signals[name]) for name in SIGNALS if signals.get(name) is not None]
    return float(np.mean(values)) if values else 0.0


def describe(signals: Mapping[str, float], settings: UncertaintySettings) -> str:
    """A few words on what makes the frame uncertain, strongest signal first."""
    words = {
        "threshold_ambiguity": f"queries near the {settings.threshold:.2f} score threshold",
        "class_entropy": "unsure which class",
        "mask_ambiguity": "unsure mask boundaries",
        "flip_disagreement": "instances change when mirrored",
    }
    present = sorted(((float(v), k) for k, v in signals.items() if v is not None and k in words), reverse=True)
    parts = [f"{words[k]} ({v:.2f})" for v, k in present[:2] if v > 0]
    return "; ".join(parts) if parts else "the model is sure of this frame"
