"""Test doubles for the serving tests: a predictor with known (synthetic) instances, frame encoders,
and an independent decoder of the detector ``mask`` field (what CVAT's server does with it)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from barrier_annotator.training.data.synthetic import render_scene
from mask2former.config.class_names import BARRIER_CLASSES
from mask2former.structures import Instances
from tests.conftest import TINY_CONFIG


class FakePredictor:
    """Returns fixed instances (threshold applied as the real predictor does) and records calls."""

    def __init__(self, instances: Instances, score_threshold: float = 0.5, error: Exception | None = None) -> None:
        self.instances = instances
        self.class_names = instances.class_names
        self.score_threshold = score_threshold
        self.error = error
        self.calls: list[tuple[tuple[int, ...], float | None]] = []

    def __call__(self, image: np.ndarray, *, score_threshold: float | None = None) -> Instances:
        self.calls.append((image.shape, score_threshold))
        if self.error is not None:
            raise self.error
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return self.instances.select(np.flatnonzero(self.instances.scores >= threshold))


def synthetic_instances(seed: int = 3, height: int = 120, width: int = 160) -> tuple[np.ndarray, Instances]:
    """A rendered guardrail scene and its true instances, scores spread over (0, 1)."""
    scene = render_scene(np.random.default_rng(seed), height, width)
    masks = np.stack([inst.mask for inst in scene.instances])
    scores = np.linspace(0.95, 0.05, len(masks))
    class_ids = np.array([inst.class_id for inst in scene.instances])
    return scene.image, Instances.from_masks(masks, scores, class_ids, BARRIER_CLASSES)


def encode_frame(image: np.ndarray, fmt: str = "PNG", **save_args: object) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **save_args)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def body(image: np.ndarray | str, **fields: object) -> dict:
    return {"image": image if isinstance(image, str) else encode_frame(image), **fields}


def server_decode_detector_mask(values: Sequence[int], height: int, width: int) -> np.ndarray:
    """CVAT's server reading of a detector ``mask``: pixels row by row inside the inclusive box."""
    xtl, ytl, xbr, ybr = (int(v) for v in values[-4:])
    pixels = np.asarray(values[:-4])
    assert pixels.size == (xbr - xtl + 1) * (ybr - ytl + 1), "length mismatch garbles the mask in CVAT"
    frame = np.zeros((height, width), dtype=bool)
    frame[ytl : ybr + 1, xtl : xbr + 1] = pixels.reshape(ybr - ytl + 1, xbr - xtl + 1) == 1
    return frame


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def loads(reply_body: str | bytes) -> object:
    return json.loads(reply_body)


def small_tiny_config(folder) -> str:
    """The tiny CPU config at a smaller test resolution (keeps every model call well under a second)."""
    path = folder / "tiny_small.yaml"
    path.write_text(f"_BASE_: {TINY_CONFIG}\nINPUT:\n  MIN_SIZE_TEST: 128\n  MAX_SIZE_TEST: 192\n")
    return str(path)


def function_env(folder, kind: str = "detector") -> dict[str, str]:
    """The environment function.yaml would set, pointing at the tiny random model."""
    return {"BARRIER_CONFIG": small_tiny_config(folder), "BARRIER_WEIGHTS": "", "BARRIER_DEVICE": "cpu",
            "BARRIER_BACKEND": "torch", "BARRIER_FUNCTION_KIND": kind, "BARRIER_MAX_PIXELS": "1000000"}


@pytest.fixture(scope="session")
def detector_function(tmp_path_factory):
    """functions/mask2former-barrier/main.py, initialised from its environment as Nuclio would do it."""
    from barrier_annotator.tools.serve_function import LocalFunction

    return LocalFunction(env=function_env(tmp_path_factory.mktemp("function")))
