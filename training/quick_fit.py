"""A model overfitted for seconds on a few synthetic scenes, for tests and benchmarks.

Random weights give near-uniform class scores and noise masks; comparisons between backends and
precisions, and timings that depend on how many masks come out, mean more on a model that has
learned something, however little. Not a training loop: see :mod:`barrier_annotator.training.engine` for that.
"""

from __future__ import annotations

import numpy as np
import torch
from fvcore.common.config import CfgNode

from mask2former.config.build import build_model
from mask2former.modeling.meta_arch import MaskFormer

from .criterion import SetCriterion, prepare_targets, total_loss
from .data.synthetic_scene import SyntheticScene, render_scene

SCENE_SIZE = (128, 160)


def synthetic_scenes(count: int, seed: int = 0, size: tuple[int, int] = SCENE_SIZE) -> list[SyntheticScene]:
    """``count`` scenes of ``size`` (height, width), each fully determined by ``(seed, index)``."""
    return [render_scene(np.random.default_rng([seed, index]), *size) for index in range(count)]


def overfit_tiny_model(cfg: CfgNode, *, steps: int = 60, images: int = 6, seed: int = 0) -> MaskFormer:
    """``cfg``'s model after ``steps`` AdamW steps on one fixed batch of ``images`` scenes (eval mode)."""
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    criterion = SetCriterion.from_config(cfg, empty_weight=model.criterion.empty_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    scenes = synthetic_scenes(images, seed)
    batch, _ = model.preprocess([torch.from_numpy(scene.image.transpose(2, 0, 1).copy()).float()
                                 for scene in scenes])
    targets = prepare_targets(
        [{"labels": torch.tensor([i.class_id for i in scene.instances], dtype=torch.long),
          "masks": torch.from_numpy(np.stack([i.mask for i in scene.instances]))} for scene in scenes],
        (int(batch.shape[-2]), int(batch.shape[-1])),
    )
    for _ in range(steps):
        loss = total_loss(criterion(model(batch), targets))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return model.eval()
