"""The configs and the test frame the inference benchmarks share (one place, so their rows compare)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_SWIN = REPO / "configs/safetybarrier/instance-segmentation/swin"
CONFIGS = {
    "tiny": _SWIN / "tiny_cpu.yaml",
    "swin_t": _SWIN / "maskformer2_swin_tiny_bs16_50ep.yaml",
    "swin_l": _SWIN / "maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
}
FRAME = (1080, 1920)  # a full-HD camera frame, as annotators upload


def benchmark_frame() -> np.ndarray:
    """The same synthetic 1080x1920 guardrail scene in every benchmark (RGB uint8)."""
    from barrier_annotator.training.data.synthetic import render_scene

    return render_scene(np.random.default_rng(7), *FRAME).image
