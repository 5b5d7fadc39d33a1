"""Optimizer param groups, gradient clipping and LR schedules (values and exact resume)."""

from __future__ import annotations

import pytest
import torch
from fvcore.common.config import CfgNode
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
)
from torch import nn

from barrier_annotator.training.solver import (
    WarmupMultiStepLR,
    WarmupPolyLR,
    build_gradient_clipper,
    build_lr_scheduler,
    build_optimizer,
)


class FrozenBatchNorm2d(nn.Module):
    """Stands in for the model's FrozenBatchNorm (not a torch norm type): matched by class name."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4))
        self.attn = Attention()
        self.norm = nn.LayerNorm(4)
        self.bn = FrozenBatchNorm2d()
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.query_embed = nn.Embedding(5, 4)
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 4)
        self.tied = nn.Linear(4, 4)
        self.tied.weight = self.head.weight  # shared: must appear once


def _cfg(**solver) -> CfgNode:
    cfg = CfgNode()
    cfg.SOLVER = CfgNode({
        "OPTIMIZER": "ADAMW", "BASE_LR": 1e-4, "WEIGHT_DECAY": 0.05, "BACKBONE_MULTIPLIER": 0.1,
        "WEIGHT_DECAY_NORM": 0.0, "WEIGHT_DECAY_EMBED": 0.0, "MOMENTUM": 0.9, "NESTEROV": False,
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR", "MAX_ITER": 200, "STEPS": (160, 180), "GAMMA": 0.1,
        "WARMUP_FACTOR": 1.0, "WARMUP_ITERS": 10, "WARMUP_METHOD": "linear",
        "POLY_LR_POWER": 0.9, "POLY_LR_CONSTANT_ENDING": 0.0,
        "CLIP_GRADIENTS": CfgNode({"ENABLED": True, "CLIP_TYPE": "full_model", "CLIP_VALUE": 0.01,
                                   "NORM_TYPE": 2.0}),
    })
    if solver:
        cfg.SOLVER.merge_from_other_cfg(CfgNode(solver))
    return cfg


def test_param_groups_follow_upstream_rules():
    model = Model()
    optimizer = build_optimizer(_cfg(), model)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert all(len(g["params"]) == 1 for g in optimizer.param_groups)
    expected = {  # name: (lr, weight decay)
        "backbone.absolute_pos_embed": (1e-5, 0.0),
        "backbone.attn.qkv.weight": (1e-5, 0.05),
        "backbone.attn.qkv.bias": (1e-5, 0.05),
        "backbone.attn.relative_position_bias_table": (1e-5, 0.0),
        "backbone.norm.weight": (1e-5, 0.0),
        "backbone.norm.bias": (1e-5, 0.0),
        "backbone.bn.weight": (1e-5, 0.0),
        "query_embed.weight": (1e-4, 0.0),
        "gn.weight": (1e-4, 0.0),
        "gn.bias": (1e-4, 0.0),
        "head.weight": (1e-4, 0.05),
        "head.bias": (1e-4, 0.05),
        "tied.bias": (1e-4, 0.05),
    }
    assert set(groups) == set(expected)  # frozen params left out, the tied weight once
    for name, (lr, decay) in expected.items():
        assert groups[name]["lr"] == pytest.approx(lr), name
        assert groups[name]["weight_decay"] == decay, name
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len({id(p) for p in params}) == len(params)


def test_norm_and_embed_decay_are_configurable():
    optimizer = build_optimizer(_cfg(WEIGHT_DECAY_NORM=0.01, WEIGHT_DECAY_EMBED=0.02), Model())
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone.norm.weight"]["weight_decay"] == 0.01
    assert groups["gn.bias"]["weight_decay"] == 0.01
    assert groups["query_embed.weight"]["weight_decay"] == 0.02


def test_full_model_clipping_bounds_the_total_norm():
    model = Model()
    optimizer = build_optimizer(_cfg(), model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    total = build_gradient_clipper(_cfg())(optimizer)
    assert total == pytest.approx(sum(p.numel() for p in {id(p): p for g in optimizer.param_groups
                                                          for p in g["params"]}.values()) ** 0.5)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                 for g in optimizer.param_groups for p in g["params"]]))
    assert norm.item() == pytest.approx(0.01, rel=1e-4)
    disabled = _cfg()
    disabled.SOLVER.CLIP_GRADIENTS.ENABLED = False
    assert build_gradient_clipper(disabled)(optimizer) is None


def _detectron2_multiplier(max_iter, steps, gamma, warmup_factor, warmup_iters):
    """detectron2 0.6's construction from fvcore schedulers, as the oracle."""
    main = MultiStepParamScheduler([gamma ** k for k in range(len(steps) + 1)], milestones=list(steps),
                                   num_updates=max_iter)
    length = min(warmup_iters / max_iter, 1.0)
    warmup = LinearParamScheduler(warmup_factor * main(0.0), main(length))
    composite = CompositeParamScheduler([warmup, main], lengths=[length, 1 - length],
                                        interval_scaling=["rescaled", "fixed"])
    return lambda it: composite(it / max_iter)


@pytest.mark.parametrize(("warmup_factor", "warmup_iters"), [(1.0, 10), (0.001, 10), (0.1, 170)])
def test_multistep_matches_detectron2(warmup_factor, warmup_iters):
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-4)
    scheduler = WarmupMultiStepLR(optimizer, 200, (160, 180), 0.1, warmup_factor, warmup_iters)
    oracle = _detectron2_multiplier(200, (160, 180), 0.1, warmup_factor, warmup_iters)
    for it in range(200):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * oracle(it), rel=1e-9), it
        optimizer.step()
        scheduler.step()


def test_multistep_known_values():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = WarmupMultiStepLR(optimizer, 200, (160, 180), 0.1, 0.001, 10)
    assert scheduler.lrs_at(0) == pytest.approx([1e-7])
    assert scheduler.lrs_at(5) == pytest.approx([1e-4 * (0.001 * 0.5 + 0.5)])
    assert scheduler.lrs_at(10) == pytest.approx([1e-4])
    assert scheduler.lrs_at(159) == pytest.approx([1e-4])
    assert scheduler.lrs_at(160) == pytest.approx([1e-5])
    assert scheduler.lrs_at(180) == pytest.approx([1e-6])


def test_poly_schedule_values():
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupPolyLR(optimizer, 100, warmup_factor=0.5, warmup_iters=10, power=0.9)
    assert scheduler.lrs_at(0) == pytest.approx([0.5])
    assert scheduler.lrs_at(50) == pytest.approx([0.5 ** 0.9])
    floored = WarmupPolyLR(optimizer, 100, warmup_iters=0, power=1.0, constant_ending=0.2)
    assert floored.lrs_at(90) == pytest.approx([0.2])


@pytest.mark.parametrize("name", ["WarmupMultiStepLR", "WarmupCosineLR", "WarmupPolyLR"])
def test_resume_restores_optimizer_and_schedule_exactly(name):
    cfg = _cfg(LR_SCHEDULER_NAME=name, WARMUP_FACTOR=0.001, MAX_ITER=40, STEPS=(20, 30))

    def make():
        torch.manual_seed(0)
        model = Model()
        optimizer = build_optimizer(cfg, model)
        return model, optimizer, build_lr_scheduler(cfg, optimizer)

    def train(model, optimizer, scheduler, iterations):
        lrs = []
        for it in iterations:
            torch.manual_seed(it)
            optimizer.zero_grad()
            model.head(torch.randn(3, 4)).pow(2).sum().backward()
            build_gradient_clipper(cfg)(optimizer)
            optimizer.step()
            scheduler.step()
            lrs.append([g["lr"] for g in optimizer.param_groups])
        return lrs

    model, optimizer, scheduler = make()
    straight = train(model, optimizer, scheduler, range(40))
    final = {k: v.clone() for k, v in model.state_dict().items()}

    model, optimizer, scheduler = make()
    first = train(model, optimizer, scheduler, range(15))
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict()}
    model, optimizer, scheduler = make()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert scheduler.last_epoch == 15
    rest = train(model, optimizer, scheduler, range(15, 40))
    assert first + rest == straight
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=0, atol=0)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME"):
        build_lr_scheduler(_cfg(LR_SCHEDULER_NAME="Nope"), torch.optim.SGD([nn.Parameter(torch.zeros(1))]))
    with pytest.raises(ValueError, match="OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), Model())
