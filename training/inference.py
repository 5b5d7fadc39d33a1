"""Evaluation on DATASETS.TEST: the product's predictor, COCO mask AP, sharded over ranks.

Predictions come from :class:`mask2former.predictor.Predictor` (test-time resize, padding and
post-processing exactly as deployed, instances at the original image size) with no score
threshold, since AP integrates over all scores. :func:`evaluate` is ``--eval-only``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader
from tqdm import tqdm

from mask2former.config.build import build_model
from mask2former.config.class_names import class_names_for
from mask2former.modeling.meta_arch import MaskFormer
from mask2former.predictor import Predictor

from .checkpointer import Checkpointer
from .data.dataset import ImageDataset
from .data.dataset_records import ImageRecord
from .data.sampler import InferenceSampler
from .distributed import get_world_size, is_main_process
from .environment import prepare_run, run_logging, training_device
from .evaluation import CocoMaskEvaluator, format_results, write_metrics
from .loaders import load_test_records, worker_start_method
from .metrics import METRICS_FILE
from .plots import CURVES_FILE, try_plot_curves

logger = logging.getLogger(__name__)


def _first(batch: list) -> Any:
    return batch[0]


def evaluate_model(cfg: CfgNode, model: MaskFormer, records: Sequence[ImageRecord], class_names: Sequence[str],
                   *, device: torch.device, dataset_name: str = "", progress: bool = True) -> dict[str, float]:
    """COCO mask metrics of ``model`` on ``records`` (rank 0 gets them; other ranks get ``{}``).

    The model is put in eval mode for the pass and back in its previous mode afterwards.
    """
    was_training = model.training
    # fp32 on purpose: the numbers measure the weights, not a deployment precision.
    predictor = Predictor(cfg, model=model, device=device, backend="torch", precision="fp32",
                          score_threshold=0.0, max_detections=cfg.TEST.DETECTIONS_PER_IMAGE,
                          class_names=class_names)
    evaluator = CocoMaskEvaluator(records, class_names, cfg.TEST.DETECTIONS_PER_IMAGE)
    sampler = InferenceSampler(len(records))
    workers = min(int(cfg.DATALOADER.NUM_WORKERS), 2)
    loader = DataLoader(ImageDataset(records), batch_size=1, sampler=sampler, num_workers=workers,
                        collate_fn=_first, multiprocessing_context=worker_start_method(workers))
    started = time.perf_counter()
    bar = tqdm(loader, total=len(sampler), desc=f"eval {dataset_name}".strip(), unit="img", leave=False,
               disable=not (progress and is_main_process()), dynamic_ncols=True)
    try:
        for record, image in bar:
            evaluator.process(record.image_id, predictor(image))
    finally:
        bar.close()
        model.train(was_training)
    elapsed = time.perf_counter() - started
    logger.info("inference on %d images (%d on this rank) took %.1f s (%.3f s/img)", len(records), len(sampler),
                elapsed, elapsed / max(len(sampler), 1))
    results = evaluator.evaluate()
    if results:
        logger.info("evaluation of %s (%d images, world size %d):\n%s", dataset_name or "the test set",
                    len(records), get_world_size(), format_results(results))
    return results


def evaluate_datasets(cfg: CfgNode, model: MaskFormer, test_sets: Mapping[str, Sequence[ImageRecord]],
                      class_names: Sequence[str], device: torch.device, progress: bool = True) -> dict[str, float]:
    """Metrics keyed as in metrics.json: ``segm/AP`` (one test set) or ``<name>/segm/AP`` (several)."""
    results: dict[str, float] = {}
    for name, records in test_sets.items():
        metrics = evaluate_model(cfg, model, records, class_names, device=device, dataset_name=name,
                                 progress=progress)
        prefix = "segm" if len(test_sets) == 1 else f"{name}/segm"
        results.update({f"{prefix}/{key}": value for key, value in metrics.items()})
    return results


def evaluate(cfg: CfgNode, weights: str | None = None, *, resume: bool = False,
             progress: bool = True) -> dict[str, float]:
    """Evaluate ``weights`` (default MODEL.WEIGHTS; with ``resume`` OUTPUT_DIR's last checkpoint).

    Appends the metrics to OUTPUT_DIR/metrics.json (with the checkpoint's iteration when it has
    one) and redraws curves.png; rank 0 returns them, other ranks ``{}``.
    """
    with run_logging(cfg.OUTPUT_DIR):
        prepare_run(cfg)
        cfg = cfg.clone()
        cfg.freeze()
        device = training_device(cfg)
        class_names = class_names_for(cfg)
        if not cfg.DATASETS.TEST:
            raise ValueError("DATASETS.TEST is empty: nothing to evaluate on")
        test_sets = {name: load_test_records(cfg, name, class_names) for name in cfg.DATASETS.TEST}
        model = build_model(cfg).to(device)
        checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=False)
        spec = cfg.MODEL.WEIGHTS if weights is None else weights
        last = checkpointer.last_checkpoint() if resume else None
        if last is not None:
            spec = str(last)
        if not spec:
            raise ValueError("nothing to evaluate: set MODEL.WEIGHTS (or --resume with a checkpoint in OUTPUT_DIR)")
        report = checkpointer.load_weights(spec)
        if report is not None and report.class_head_skipped:
            logger.warning("the class head of %s does not fit NUM_CLASSES: its class scores are random", spec)
        results = evaluate_datasets(cfg, model, test_sets, class_names, device, progress=progress)
        if is_main_process() and results:
            output_dir = Path(cfg.OUTPUT_DIR)
            write_metrics(output_dir / METRICS_FILE, results, iteration=checkpoint_iteration(spec), prefix="")
            try_plot_curves(output_dir / METRICS_FILE, output_dir / CURVES_FILE, f"evaluation of {spec}")
        return results


def checkpoint_iteration(spec: str) -> int | None:
    """The ``iteration`` of a local .pth without reading its tensors (memory-mapped); else None."""
    path = Path(spec)
    if path.suffix != ".pth" or not path.is_file():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not ours / not loadable this way: the metrics line just has no iteration
        return None
    iteration = content.get("iteration") if isinstance(content, dict) else None
    return int(iteration) if isinstance(iteration, int) else None
