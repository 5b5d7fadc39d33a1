"""Optimizer, gradient clipping and LR schedules with Mask2Former's / detectron2's semantics.

- Param groups as upstream's ``Trainer.build_optimizer``: one group per parameter (each once),
  LR x BACKBONE_MULTIPLIER inside modules named ``*backbone*``, no weight decay for Swin's
  ``relative_position_bias_table`` / ``absolute_pos_embed``, WEIGHT_DECAY_NORM for norm layers,
  WEIGHT_DECAY_EMBED for ``nn.Embedding``.
- Clipping is a separate call (after ``GradScaler.unscale_``) instead of upstream's optimizer
  subclass, so AMP unscaling and clipping order are explicit in the training loop.
- Schedules are per-iteration ``LRScheduler`` subclasses whose state is only
  ``base_lrs`` + ``last_epoch`` (as detectron2's ``LRMultiplier``): resume restores the step,
  the schedule itself comes from the config.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

logger = logging.getLogger(__name__)

NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def is_norm_module(module: nn.Module) -> bool:
    """torch norm layers, plus any FrozenBatchNorm (matched by class name: it is not a torch type)."""
    return isinstance(module, NORM_MODULE_TYPES) or "FrozenBatchNorm" in type(module).__name__


def build_param_groups(model: nn.Module, base_lr: float, weight_decay: float, backbone_multiplier: float,
                       weight_decay_norm: float, weight_decay_embed: float) -> list[dict[str, Any]]:
    """One optimizer group per trainable parameter, in ``named_modules`` order, shared params once."""
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, decay = base_lr, weight_decay
            if "backbone" in module_name:
                lr = lr * backbone_multiplier
            if any(name in param_name for name in NO_DECAY_PARAM_NAMES):
                decay = 0.0
            if is_norm_module(module):
                decay = weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            groups.append({"params": [param], "lr": lr, "weight_decay": decay, "name": full_name})
    return groups


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER ADAMW (or SGD) over :func:`build_param_groups`."""
    solver = cfg.SOLVER
    groups = build_param_groups(model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BACKBONE_MULTIPLIER,
                                solver.WEIGHT_DECAY_NORM, solver.WEIGHT_DECAY_EMBED)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    kind = str(solver.OPTIMIZER).upper()
    if kind == "ADAMW":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=solver.BASE_LR)
    elif kind == "SGD":
        optimizer = torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM,
                                    nesterov=solver.NESTEROV)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER {solver.OPTIMIZER!r} is not supported (ADAMW, SGD)")
    backbone = sum(1 for g in groups if g["lr"] != solver.BASE_LR)
    logger.info("%s: %d parameter tensors, %d at backbone LR x%g", kind, len(groups), backbone,
                solver.BACKBONE_MULTIPLIER)
    return optimizer


def build_gradient_clipper(cfg: Any) -> Callable[[torch.optim.Optimizer], float | None]:
    """SOLVER.CLIP_GRADIENTS as a call on the optimizer's parameters; returns the total norm for
    ``full_model``. Call it after ``scaler.unscale_(optimizer)`` and before ``optimizer.step``."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    value, norm_type, kind = float(clip.CLIP_VALUE), float(clip.NORM_TYPE), str(clip.CLIP_TYPE)
    if kind not in ("full_model", "value", "norm"):
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE {kind!r}: expected full_model, value or norm")

    def params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]

    def no_clip(optimizer: torch.optim.Optimizer) -> None:
        return None

    def full_model(optimizer: torch.optim.Optimizer) -> float:
        return float(torch.nn.utils.clip_grad_norm_(params_of(optimizer), value, norm_type))

    def per_param(optimizer: torch.optim.Optimizer) -> None:
        for p in params_of(optimizer):
            if kind == "value":
                torch.nn.utils.clip_grad_value_(p, value)
            else:
                torch.nn.utils.clip_grad_norm_(p, value, norm_type)

    if not clip.ENABLED or (kind == "full_model" and value <= 0):
        return no_clip
    return full_model if kind == "full_model" else per_param


class _IterationLR(LRScheduler):
    """LR = base LR x ``multiplier(iteration)``; stepped once per iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, last_epoch: int = -1) -> None:
        if max_iter <= 0:
            raise ValueError(f"max_iter must be positive, got {max_iter}")
        self.max_iter = max_iter
        super().__init__(optimizer, last_epoch)

    def multiplier(self, iteration: int) -> float:
        raise NotImplementedError

    def lrs_at(self, iteration: int) -> list[float]:
        """The LR of every group at ``iteration`` (pure: does not touch the optimizer)."""
        factor = self.multiplier(iteration)
        return [base_lr * factor for base_lr in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self.lrs_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self.lrs_at(self.last_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = list(state_dict["base_lrs"])
        self.last_epoch = int(state_dict["last_epoch"])
        self._last_lr = self.lrs_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


class _WarmupComposite(_IterationLR):
    """detectron2's ``WarmupParamScheduler``: a warmup ramp from ``warmup_factor * main(0)`` to
    ``main(warmup_iters)`` (linear) or flat at the start value (constant), then ``main``."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, warmup_factor: float,
                 warmup_iters: int, warmup_method: str, last_epoch: int = -1) -> None:
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"SOLVER.WARMUP_METHOD {warmup_method!r}: expected linear or constant")
        self.warmup_factor = warmup_factor
        self.warmup_iters = min(int(warmup_iters), max_iter)
        self.warmup_method = warmup_method
        super().__init__(optimizer, max_iter, last_epoch)

    def main(self, iteration: int) -> float:
        raise NotImplementedError

    def multiplier(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            return self.main(iteration)
        start = self.warmup_factor * self.main(0)
        if self.warmup_method == "constant":
            return start
        alpha = iteration / self.warmup_iters
        return start * (1 - alpha) + self.main(self.warmup_iters) * alpha


class WarmupMultiStepLR(_WarmupComposite):
    """x GAMMA at each of STEPS, after the warmup (detectron2 0.6 semantics)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, steps: Sequence[int],
                 gamma: float = 0.1, warmup_factor: float = 0.001, warmup_iters: int = 1000,
                 warmup_method: str = "linear", last_epoch: int = -1) -> None:
        kept = sorted(int(s) for s in steps if s <= max_iter)
        if len(kept) != len(steps):
            logger.warning("SOLVER.STEPS %s has values larger than SOLVER.MAX_ITER %d; they are ignored",
                           list(steps), max_iter)
        self.steps = kept
        self.gamma = gamma
        super().__init__(optimizer, max_iter, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def main(self, iteration: int) -> float:
        return self.gamma ** bisect.bisect_right(self.steps, iteration)


class WarmupCosineLR(_WarmupComposite):
    """Half-cosine from 1 to 0 over MAX_ITER, after the warmup (detectron2 0.6 semantics)."""

    def main(self, iteration: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * iteration / self.max_iter))


class WarmupPolyLR(_IterationLR):
    """(1 - it / MAX_ITER) ** POLY_LR_POWER times the warmup factor, with an optional floor
    (POLY_LR_CONSTANT_ENDING) once warmup is over: detectron2's DeepLab scheduler."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iter: int, warmup_factor: float = 0.001,
                 warmup_iters: int = 1000, warmup_method: str = "linear", power: float = 0.9,
                 constant_ending: float = 0.0, last_epoch: int = -1) -> None:
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, max_iter, last_epoch)

    def multiplier(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            warmup = 1.0
        elif self.warmup_method == "constant":
            warmup = self.warmup_factor
        else:
            alpha = iteration / self.warmup_iters
            warmup = self.warmup_factor * (1 - alpha) + alpha
        poly = max(0.0, 1.0 - iteration / self.max_iter) ** self.power
        if self.constant_ending > 0 and warmup == 1.0 and poly < self.constant_ending:
            return self.constant_ending
        return warmup * poly


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """SOLVER.LR_SCHEDULER_NAME: WarmupMultiStepLR, WarmupCosineLR or WarmupPolyLR."""
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    if name == "WarmupMultiStepLR":
        return WarmupMultiStepLR(optimizer, s.MAX_ITER, s.STEPS, s.GAMMA, s.WARMUP_FACTOR,
                                 s.WARMUP_ITERS, s.WARMUP_METHOD)
    if name == "WarmupCosineLR":
        return WarmupCosineLR(optimizer, s.MAX_ITER, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD)
    if name == "WarmupPolyLR":
        return WarmupPolyLR(optimizer, s.MAX_ITER, s.WARMUP_FACTOR, s.WARMUP_ITERS, s.WARMUP_METHOD,
                            s.POLY_LR_POWER, s.POLY_LR_CONSTANT_ENDING)
    raise ValueError(f"SOLVER.LR_SCHEDULER_NAME {name!r}: expected WarmupMultiStepLR, WarmupCosineLR "
                     "or WarmupPolyLR")

