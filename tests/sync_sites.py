"""A construction site a tiny model learns in five iterations, for the sync-and-train loop tests.

The synthetic barrier scenes (``barrier_annotator.training.data.synthetic``) need hundreds of iterations before a
tiny model's mask AP leaves 0, and the loop never deploys a model with AP 0. Here every frame has
the same two bands (a yellow ``toeboard`` and a red ``rail_top``) on its own random dark noise:
distinct bytes (the train/val split is by content hash), the same easy shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from barrier_annotator.cvat import CvatDocument, LabelSpec
from barrier_annotator.training.data.synthetic import CLASS_NAMES

HEIGHT, WIDTH = 64, 96
BANDS = (("rail_top", 12, 18, (200, 40, 40)), ("toeboard", 40, 56, (230, 200, 30)))


@dataclass(frozen=True)
class Site:
    annotations: Path  # CVAT for images 1.1, every frame
    images: Path
    names: list[str]


def easy_site(root: Path, frames: int, seed: int) -> Site:
    """``frames`` PNG frames and their CVAT XML (one mask per band) under ``root``."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    document = CvatDocument.new([LabelSpec(name) for name in CLASS_NAMES], task_name=f"easy site {seed}")
    names = []
    for index in range(frames):
        pixels = rng.integers(0, 40, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        name = f"{index:06d}.png"
        entry = document.add_image(name, WIDTH, HEIGHT)
        for label, top, bottom, color in BANDS:
            pixels[top:bottom] = color
            mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
            mask[top:bottom] = True
            entry.add_mask(label, mask, source="manual")
        Image.fromarray(pixels).save(images / name)
        names.append(name)
    annotations = root / "annotations.xml"
    document.save(annotations)
    return Site(annotations, images, names)
