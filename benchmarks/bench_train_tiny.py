"""Training benchmark: the tiny config from scratch on a synthetic barrier set, fixed CPU budget.

Generates (and caches, by seed and size) 300 train / 60 val synthetic images at 320 px, trains
``configs/safetybarrier/instance-segmentation/swin/tiny_cpu.yaml`` from random initialisation for
a wall-clock budget (evaluation not counted; SOLVER.MAX_ITER/STEPS are fitted to the measured
speed so the LR drops happen within it), evaluates on the val set and prints COCO mask AP, AP50,
AP75 and per-class AP / AP50, the iterations done, s/iter and where curves.png is.

    python benchmarks/bench_train_tiny.py [--budget 600] [--threads 2] [--output DIR] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from barrier_annotator.training.data.synthetic import CLASS_NAMES, dataset_overrides, generate_dataset  # noqa: E402
from barrier_annotator.training.engine import Trainer  # noqa: E402
from barrier_annotator.training.environment import prepare_run, run_logging  # noqa: E402
from barrier_annotator.training.plots import CURVES_FILE  # noqa: E402
from mask2former.config import load_config  # noqa: E402
from mask2former.utils import default_cache_dir  # noqa: E402

TINY_CONFIG = REPO / "configs/safetybarrier/instance-segmentation/swin/tiny_cpu.yaml"
logger = logging.getLogger("bench_train_tiny")


def synthetic_set(cache: Path, seed: int, num_train: int, num_val: int, size: int) -> Path:
    """The generated set, reused when a previous run completed it with the same parameters."""
    params = {"seed": seed, "train": num_train, "val": num_val, "size": size}
    folder = cache / f"synthetic_s{seed}_{num_train}x{num_val}_{size}px"
    marker = folder / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()) == params:
        logger.info("using the cached synthetic set %s", folder)
        return folder
    started = time.perf_counter()
    generate_dataset(folder, num_train=num_train, num_val=num_val, image_size=size, seed=seed)
    marker.write_text(json.dumps(params))
    logger.info("generated %s in %.0f s", folder, time.perf_counter() - started)
    return folder


def rescale_schedule(cfg, iterations: int) -> None:
    """SOLVER.MAX_ITER = iterations, with STEPS and the eval/checkpoint periods at the same fractions."""
    scale = iterations / cfg.SOLVER.MAX_ITER
    cfg.SOLVER.STEPS = tuple(max(1, round(step * scale)) for step in cfg.SOLVER.STEPS)
    cfg.TEST.EVAL_PERIOD = max(1, round(cfg.TEST.EVAL_PERIOD * scale)) if cfg.TEST.EVAL_PERIOD > 0 else 0
    cfg.SOLVER.CHECKPOINT_PERIOD = max(1, round(cfg.SOLVER.CHECKPOINT_PERIOD * scale))
    cfg.SOLVER.MAX_ITER = iterations


def print_table(metrics: dict[str, float], trainer: Trainer, wall: float, output: Path) -> None:
    def cell(key: str) -> str:
        value = metrics.get(f"segm/{key}", math.nan)
        return f"{value:7.1f}" if math.isfinite(value) else "      -"

    budget = trainer.budget
    train_seconds = budget.used if budget is not None else wall
    iterations = trainer.iter
    step_times = list(trainer.history._values.get("time", []))
    print()
    print(f"val mask AP (%), {len(trainer.test_sets.get('bench_val', []))} images, after {iterations} iterations "
          f"(batch {trainer.cfg.SOLVER.IMS_PER_BATCH}, {torch.get_num_threads()} threads)")
    print(f"{'':<16}{'AP':>7}{'AP50':>7}{'AP75':>7}")
    print(f"{'all':<16}{cell('AP')}{cell('AP50')}{cell('AP75')}")
    for name in CLASS_NAMES:
        print(f"{name:<16}{cell('AP-' + name)}{cell('AP50-' + name)}{'':>7}")
    per_iter = train_seconds / max(iterations, 1)
    median = statistics.median(step_times) if step_times else math.nan
    print(f"iterations {iterations} (planned SOLVER.MAX_ITER {trainer.max_iter}), training {train_seconds:.0f} s, "
          f"{per_iter:.2f} s/iter overall (median of last {len(step_times)}: {median:.2f} s), wall {wall:.0f} s")
    print(f"machine load average (1, 5, 15 min) at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    print(f"curves: {output / CURVES_FILE}")
    print(f"log, metrics.json, config.yaml, model_final.pth: {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds (default 600)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="train exactly N iterations instead of a time budget (SOLVER.STEPS and the "
                             "eval/checkpoint periods scaled from the config): comparisons that machine load "
                             "cannot skew")
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--size", type=int, default=320, help="long image side of the synthetic set")
    parser.add_argument("--seed", type=int, default=0, help="synthetic set seed (the training seed is SEED)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cache", type=Path, default=None, help="synthetic set cache (default: the weights cache)")
    parser.add_argument("--output", type=Path, default=None,
                        help="run folder (default output/bench_train_tiny/<date-time>)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="tiny_cpu.yaml overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = args.cache or default_cache_dir() / "synthetic"
    data = synthetic_set(cache, args.seed, args.train, args.val, args.size)
    output = args.output or REPO / "output" / "bench_train_tiny" / datetime.now().strftime("%Y%m%d-%H%M%S")
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(output), "SEED", "0",
            *dataset_overrides(data, "bench"), *args.opts]
    cfg = load_config(TINY_CONFIG, opts)
    if args.iterations:
        rescale_schedule(cfg, args.iterations)
    started = time.perf_counter()
    with run_logging(output):
        prepare_run(cfg)
        trainer = Trainer(cfg, max_seconds=None if args.iterations else args.budget, fit_schedule_to_budget=True,
                          progress=not args.no_progress)
        metrics = trainer.train()
    print_table(metrics, trainer, time.perf_counter() - started, output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
