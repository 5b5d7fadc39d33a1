"""The one place that talks to the training package: finetune on a round, evaluate weights on val.

One process (``--num-gpus 1``, CPU or one GPU) trains in-process with :func:`barrier_annotator.training.engine.train`;
more GPUs run ``python -m barrier_annotator.training.train_net --num-gpus N`` (its launcher starts the workers) on the
same merged config, then read the final metrics from ``metrics.json``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fvcore.common.config import CfgNode

from barrier_annotator.training.data.catalog import add_dataset_config
from barrier_annotator.training.metrics import METRICS_FILE, read_metrics
from mask2former.config import load_config
from mask2former.config.class_names import class_names_for

from .redact import child_environment

logger = logging.getLogger(__name__)

FINAL_WEIGHTS = "model_final.pth"


class TrainingFailed(RuntimeError):
    """Training or evaluation did not produce a result; nothing was deployed."""


@dataclass(frozen=True)
class DatasetSplit:
    name: str
    annotations: Path
    images: Path


@dataclass(frozen=True)
class TrainRequest:
    config_file: Path
    train: DatasetSplit
    val: DatasetSplit
    output_dir: Path
    init_weights: str | None = None  # None: the config's MODEL.WEIGHTS; "": random init
    iterations: int | None = None    # None: the config's SOLVER.MAX_ITER
    num_gpus: int = 1
    opts: Sequence[str] = ()
    resume: bool = False
    progress: bool = True


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    config: Path
    metrics: Mapping[str, float]


def _with_datasets(cfg: CfgNode, output_dir: Path, splits: Sequence[DatasetSplit], *, train: DatasetSplit | None,
                   val: DatasetSplit) -> CfgNode:
    cfg.defrost()
    add_dataset_config(cfg)
    names = {split.name for split in splits}
    cfg.DATASETS.REGISTER = [entry for entry in cfg.DATASETS.REGISTER if entry[0] not in names] + [
        [split.name, str(split.annotations.absolute()), str(split.images.absolute())] for split in splits]
    if train is not None:
        cfg.DATASETS.TRAIN = (train.name,)
    cfg.DATASETS.TEST = (val.name,)
    cfg.OUTPUT_DIR = str(output_dir.absolute())
    if not cfg.DATASETS.CLASS_NAMES:
        # Written into the packaged config, so the deployed function names classes the same way.
        cfg.DATASETS.CLASS_NAMES = list(class_names_for(cfg))
    return cfg


def build_config(request: TrainRequest) -> CfgNode:
    """The config file, the KEY VALUE overrides, then this round's datasets, weights and length."""
    cfg = load_config(str(request.config_file), list(request.opts))
    _with_datasets(cfg, request.output_dir, (request.train, request.val), train=request.train, val=request.val)
    if request.init_weights is not None:
        cfg.MODEL.WEIGHTS = request.init_weights
    if request.iterations is not None:
        cfg.SOLVER.MAX_ITER = int(request.iterations)
    cfg.freeze()
    return cfg


def finetune(request: TrainRequest) -> TrainResult:
    """Train, evaluate on val; TrainingFailed (with the cause) unless ``model_final.pth`` exists."""
    try:
        cfg = build_config(request)
    except Exception as error:
        raise TrainingFailed(f"bad training config: {error}") from error
    request.output_dir.mkdir(parents=True, exist_ok=True)
    if request.num_gpus > 1:
        metrics = _train_in_workers(cfg, request)
    else:
        from barrier_annotator.training.engine import TrainingInterrupted, train

        try:
            metrics = train(cfg, resume=request.resume, progress=request.progress)
        except (KeyboardInterrupt, TrainingInterrupted):
            raise
        except Exception as error:
            raise TrainingFailed(f"training failed: {type(error).__name__}: {error}") from error
    weights = request.output_dir / FINAL_WEIGHTS
    if not weights.is_file():
        raise TrainingFailed(f"training ended without {weights} (SOLVER.MAX_ITER 0?)")
    return TrainResult(weights, request.output_dir / "config.yaml", dict(metrics))


def _train_in_workers(cfg: CfgNode, request: TrainRequest) -> dict[str, float]:
    config_path = request.output_dir / "sync_config.yaml"
    config_path.write_text(cfg.dump(), encoding="utf-8")
    command = [sys.executable, "-m", "barrier_annotator.training.train_net", "--config-file", str(config_path),
               "--num-gpus", str(request.num_gpus)]
    if request.resume:
        command.append("--resume")
    if not request.progress:
        command.append("--no-progress")
    logger.info("training with %d GPUs: %s", request.num_gpus, " ".join(command))
    status = subprocess.run(command, env=child_environment(), check=False).returncode
    if status != 0:
        raise TrainingFailed(f"python -m barrier_annotator.training.train_net exited with status {status}; "
                             f"see {request.output_dir / 'log.txt'}")
    return final_metrics(request.output_dir / METRICS_FILE)


def training_hardware(config_file: Path, opts: Sequence[str], num_gpus: int) -> str:
    """Where a finetune would run, in words: "on the CPU", "on 2 GPUs" (MODEL.DEVICE decides, not --num-gpus)."""
    try:
        device = str(load_config(str(config_file), list(opts)).MODEL.DEVICE)
    except Exception as error:  # a dry run reports it; the real run fails on it with the full message
        return f"(MODEL.DEVICE unknown: {config_file} does not load: {error})"
    if not device.startswith("cuda"):
        return "on the CPU" + (f" in {num_gpus} worker processes" if num_gpus > 1 else "")
    import torch

    where = f"on {num_gpus} GPU" + ("s" if num_gpus > 1 else "") + f" (MODEL.DEVICE {device})"
    visible = torch.cuda.device_count()
    if visible < num_gpus:
        where += (f", but {visible} CUDA device{'s are' if visible != 1 else ' is'} visible here: the run would "
                  f"fail (add --opts MODEL.DEVICE cpu to train on the CPU)")
    return where


def final_metrics(path: Path) -> dict[str, float]:
    """The last evaluation line of a ``metrics.json``."""
    evaluations = [line for line in read_metrics(path) if any(k.endswith("/AP") for k in line)]
    if not evaluations:
        raise TrainingFailed(f"{path} has no evaluation results")
    return {k: v for k, v in evaluations[-1].items() if k not in ("iteration",)}


def evaluate(config_file: Path, weights: Path | str, val: DatasetSplit, output_dir: Path, *,
             device: str | None = None, progress: bool = True) -> dict[str, float]:
    """COCO mask metrics of ``weights`` (built with ``config_file``) on ``val``."""
    from barrier_annotator.training.engine import evaluate as engine_evaluate

    try:
        cfg = load_config(str(config_file), [])
        _with_datasets(cfg, output_dir, (val,), train=None, val=val)
        if device:
            cfg.MODEL.DEVICE = device
        cfg.MODEL.WEIGHTS = str(weights)
        cfg.freeze()
        return dict(engine_evaluate(cfg, str(weights), progress=progress))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        raise TrainingFailed(f"evaluation of {weights} failed: {type(error).__name__}: {error}") from error
