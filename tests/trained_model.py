"""A tiny model trained for a few seconds on synthetic barrier scenes, so it predicts real shapes.

Random weights give near-uniform class scores and noise masks; comparisons between backends
and precisions mean more on a model that has learned something, however little.
"""

from __future__ import annotations

import numpy as np
import torch

from mask2former.config.build import build_model
from mask2former.modeling.meta_arch import MaskFormer
from training.criterion import SetCriterion, prepare_targets, total_loss
from training.data.synthetic import render_scene

IMAGE_SIZE = (128, 160)


def synthetic_scenes(count: int, seed: int = 0, size: tuple[int, int] = IMAGE_SIZE) -> list:
    return [render_scene(np.random.default_rng([seed, index]), *size) for index in range(count)]


def train_tiny_model(cfg, *, steps: int = 60, images: int = 6, seed: int = 0) -> MaskFormer:
    """Overfits the tiny config on a handful of scenes (about 10 s on 2 cores)."""
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    criterion = SetCriterion.from_config(cfg, empty_weight=model.criterion.empty_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    scenes = synthetic_scenes(images, seed)
    tensors = [torch.from_numpy(scene.image.transpose(2, 0, 1).copy()).float() for scene in scenes]
    batch, _ = model.preprocess(tensors)
    targets = prepare_targets(
        [{"labels": torch.tensor([i.class_id for i in scene.instances], dtype=torch.long),
          "masks": torch.from_numpy(np.stack([i.mask for i in scene.instances]))} for scene in scenes],
        tuple(batch.shape[-2:]),
    )
    for _ in range(steps):
        loss = total_loss(criterion(model(batch), targets))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()
