"""Training checkpoints in detectron2's layout, written atomically, resumed exactly.

``model_XXXXXXX.pth`` / ``model_final.pth`` are torch pickles of
``{"model": state dict, "optimizer": ..., "scheduler": ..., "iteration": N, ...}`` where
``model`` is exactly the unwrapped model's ``state_dict()`` (upstream key names) and ``N`` is the
0-based index of the last completed iteration, as detectron2 writes it (resume starts at N + 1).
Extra entries needed for an exact resume: ``grad_scaler`` (AMP) and ``seed`` (data order,
augmentation and per-step randomness derive from it). ``last_checkpoint`` holds the file name
of the newest checkpoint, as detectron2's ``Checkpointer`` keeps it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mask2former.utils import atomic_open, atomic_write_with
from mask2former.weights import (
    CheckpointMismatchError,
    WeightsReport,
    load_checkpoint,
    read_checkpoint,
    resolve_weights,
)

from .distributed import get_local_rank, synchronize

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
FINAL_NAME = "model_final"


def periodic_name(iteration: int) -> str:
    """detectron2's periodic file name for the 0-based iteration index ``iteration``."""
    return f"model_{iteration:07d}"


@dataclass
class ResumeState:
    """What a resumed run continues from."""

    path: Path
    start_iter: int
    seed: int | None


class Checkpointer:
    """Saves / restores the model, optimizer, LR scheduler and AMP scaler of one run.

    Only the process with ``save_to_disk`` writes (rank 0); every rank loads.
    """

    def __init__(self, model: nn.Module, output_dir: str | Path, *, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any = None, grad_scaler: torch.amp.GradScaler | None = None,
                 save_to_disk: bool = True) -> None:
        self.model = model
        self.output_dir = Path(output_dir)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_scaler = grad_scaler
        self.save_to_disk = save_to_disk

    def state(self, iteration: int, **extra: Any) -> dict[str, Any]:
        content: dict[str, Any] = {"model": self.model.state_dict()}
        if self.optimizer is not None:
            content["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            content["scheduler"] = self.scheduler.state_dict()
        if self.grad_scaler is not None and self.grad_scaler.is_enabled():
            content["grad_scaler"] = self.grad_scaler.state_dict()
        content["iteration"] = int(iteration)
        content.update(extra)
        return content

    def save(self, name: str, iteration: int, **extra: Any) -> Path | None:
        """Write ``<name>.pth`` atomically, then point ``last_checkpoint`` at it."""
        if not self.save_to_disk:
            return None
        path = self.output_dir / f"{name}.pth"
        content = self.state(iteration, **extra)
        atomic_write_with(path, lambda handle: torch.save(content, handle))
        with atomic_open(self.output_dir / LAST_CHECKPOINT, "w") as handle:
            handle.write(path.name)
        logger.info("saved checkpoint %s (iteration %d)", path, iteration)
        return path

    def last_checkpoint(self) -> Path | None:
        """The file ``last_checkpoint`` names, if both exist."""
        marker = self.output_dir / LAST_CHECKPOINT
        if not marker.is_file():
            return None
        name = marker.read_text(encoding="utf-8").strip()
        path = self.output_dir / name
        if not path.is_file():
            logger.warning("%s names %s, which does not exist; not resuming", marker, path)
            return None
        return path

    def resume(self, path: str | Path) -> ResumeState:
        """Restore everything from one of our own checkpoints; the model must match exactly."""
        path = Path(path)
        content = read_checkpoint(path)
        try:
            self.model.load_state_dict(content["model"], strict=True)
        except RuntimeError as error:
            raise CheckpointMismatchError(f"{path}: cannot resume, the model built from the config differs "
                                          f"from the checkpoint's:\n{error}") from error
        missing = [key for key, holder in (("optimizer", self.optimizer), ("scheduler", self.scheduler))
                   if holder is not None and key not in content]
        if missing:
            raise CheckpointMismatchError(f"{path}: cannot resume training, the file has no {' or '.join(missing)} "
                                          "state (a weights-only file: pass it as MODEL.WEIGHTS instead)")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(content["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(content["scheduler"])
        if self.grad_scaler is not None and self.grad_scaler.is_enabled() and "grad_scaler" in content:
            self.grad_scaler.load_state_dict(content["grad_scaler"])
        iteration = int(content.get("iteration", -1))
        seed = content.get("seed")
        logger.info("resumed from %s: iteration %d done, continuing at %d", path, iteration, iteration + 1)
        return ResumeState(path, iteration + 1, None if seed is None else int(seed))

    def load_weights(self, spec: str) -> WeightsReport | None:
        """Initialise the model from MODEL.WEIGHTS (a path, URL or model-zoo name); '' = random init.

        One process per machine downloads, the others wait and then read the cached file.
        """
        if not spec:
            logger.warning("MODEL.WEIGHTS is empty: training starts from random initialisation")
            return None
        if get_local_rank() == 0:
            path = resolve_weights(spec)
        synchronize()
        if get_local_rank() != 0:
            path = resolve_weights(spec)
        return load_checkpoint(self.model, path)


def resume_or_load(checkpointer: Checkpointer, weights: str, resume: bool) -> ResumeState | None:
    """detectron2's ``resume_or_load``: the run's last checkpoint when resuming and one exists,
    otherwise ``weights`` into the model only (returns None: start at iteration 0)."""
    if resume:
        path = checkpointer.last_checkpoint()
        if path is not None:
            return checkpointer.resume(path)
        logger.info("--resume: no checkpoint in %s yet, starting from MODEL.WEIGHTS", checkpointer.output_dir)
    checkpointer.load_weights(weights)
    return None
