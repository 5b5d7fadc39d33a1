"""Train or evaluate Mask2Former with detectron2's ``train_net.py`` command line.

    barrier-train --config-file CONFIG.yaml [--num-gpus N] [--resume] [--eval-only]
        [--num-machines M --machine-rank R --dist-url tcp://HOST:PORT] [KEY VALUE ...]

``--num-gpus N`` starts N workers on this machine (torch.multiprocessing + torch.distributed);
``torchrun --nproc-per-node N -m barrier_annotator.training.train_net ...`` works as well (its
environment wins); ``barrier-train`` is ``python -m barrier_annotator.training.train_net``.
Trailing ``KEY VALUE`` pairs override the config, e.g. ``MODEL.WEIGHTS model_final_e5f453.pkl
OUTPUT_DIR output_large``. Exit codes: 0 done, 2 bad config/dataset/weights, 3 loss diverged,
130 interrupted (a checkpoint was saved: continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from fvcore.common.config import CfgNode

from mask2former.command_line import LOG_FORMAT
from mask2former.config import ConfigError, load_config
from mask2former.weights import CheckpointMismatchError, UnsafeCheckpointError, WeightsNotFoundError

from .data.catalog import add_dataset_arguments, apply_dataset_arguments
from .data.coco import DatasetFormatError
from .distributed import LaunchError, WorkerFailed, get_rank, launch
from .engine import TrainingDiverged, TrainingInterrupted, evaluate, train
from .evaluation import format_results
from .loaders import DatasetNotFoundError

logger = logging.getLogger("barrier-train")

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130
# Failures a user fixes on the command line / in files: one clear line, no traceback.
USER_ERRORS = (ConfigError, DatasetNotFoundError, DatasetFormatError, CheckpointMismatchError,
               UnsafeCheckpointError, WeightsNotFoundError, LaunchError, FileNotFoundError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barrier-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  barrier-train --config-file configs/safetybarrier/instance-segmentation/swin/"
               "maskformer2_swin_large_IN21k_384_bs16_100ep.yaml --num-gpus 2 MODEL.WEIGHTS model_final_e5f453.pkl "
               "OUTPUT_DIR output_large\n"
               "  barrier-train --config-file output_large/config.yaml --eval-only "
               "MODEL.WEIGHTS output_large/model_final.pth")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR's last checkpoint (model, optimizer, scheduler, iteration); "
                             "without one, start from MODEL.WEIGHTS")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST")
    parser.add_argument("--num-gpus", type=int, default=1, help="workers per machine (GPUs; CPU processes with "
                                                                "MODEL.DEVICE cpu)")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)")
    parser.add_argument("--dist-url", default="auto",
                        help="rendezvous of the process group, e.g. tcp://10.0.0.1:29500 (the same on every "
                             "machine); 'auto' picks a free local port (one machine only)")
    parser.add_argument("--max-seconds", type=float, default=None, metavar="S",
                        help="stop training after S seconds (evaluation not counted), save model_final.pth, evaluate")
    parser.add_argument("--fit-schedule", action="store_true",
                        help="with --max-seconds: rescale SOLVER.MAX_ITER/STEPS to the measured speed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    add_dataset_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                        help="config overrides at the end of the command, e.g. SOLVER.IMS_PER_BATCH 4")
    return parser


def setup_config(args: argparse.Namespace) -> CfgNode:
    """The config file with the KEY VALUE overrides, then the dataset flags."""
    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    cfg = load_config(args.config_file, opts)
    apply_dataset_arguments(cfg, args)
    if args.fit_schedule and not args.max_seconds:
        raise ConfigError("--fit-schedule needs --max-seconds")
    return cfg


def configure_console_logging() -> None:
    """stderr logging for this process: INFO on rank 0, warnings only on the other ranks."""
    root = logging.getLogger()
    if any(getattr(h, "_train_net", False) for h in root.handlers):
        return
    rank = get_rank() if "RANK" not in os.environ else int(os.environ["RANK"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    handler._train_net = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run(cfg: CfgNode, args: argparse.Namespace) -> int:
    """The per-worker entry point (every rank runs it); returns the exit status."""
    configure_console_logging()
    try:
        if args.eval_only:
            results = evaluate(cfg, resume=args.resume, progress=not args.no_progress)
        else:
            results = train(cfg, resume=args.resume, max_seconds=args.max_seconds,
                            fit_schedule_to_budget=args.fit_schedule, progress=not args.no_progress)
    except TrainingInterrupted:
        return EXIT_INTERRUPTED  # the engine logged where the checkpoint is
    except KeyboardInterrupt:
        logger.error("aborted without saving; the last checkpoint in %s is still valid", cfg.OUTPUT_DIR)
        return EXIT_INTERRUPTED
    except TrainingDiverged:
        return EXIT_DIVERGED  # logged by the engine, with the iteration and the loss terms
    except USER_ERRORS as error:
        logger.error("%s", error)
        return EXIT_USAGE
    if results:
        logger.info("final metrics (%s):\n%s", cfg.OUTPUT_DIR, format_results(results))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_console_logging()
    try:
        cfg = setup_config(args)
    except (ConfigError, ValueError) as error:
        logger.error("%s", error)
        return EXIT_USAGE
    logger.info("command line: %s", " ".join(sys.argv) if argv is None else " ".join(argv))
    device_type = "cuda" if str(cfg.MODEL.DEVICE).startswith("cuda") else "cpu"
    try:
        status = launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                        dist_url=args.dist_url, args=(cfg, args), device_type=device_type)
    except LaunchError as error:
        logger.error("%s", error)
        return EXIT_USAGE
    except WorkerFailed as error:
        logger.error("%s", error)
        return error.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)


if __name__ == "__main__":
    sys.exit(main())
