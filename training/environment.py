"""Per-run setup shared by training and evaluation: device, seeds, log files, config dump.

Everything a run writes goes to OUTPUT_DIR (``log.txt``, ``config.yaml``, ``metrics.json``,
checkpoints, ``curves.png``), so a run can be inspected and replayed from that folder alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode

from mask2former.command_line import LOG_FORMAT
from mask2former.utils import atomic_open

from .distributed import broadcast_object, get_local_rank, get_rank, get_world_size

logger = logging.getLogger(__name__)

CONFIG_DUMP = "config.yaml"


def training_device(cfg: CfgNode) -> torch.device:
    """MODEL.DEVICE, with this process's GPU under multi-GPU training; a clear error without CUDA."""
    name = str(cfg.MODEL.DEVICE)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("MODEL.DEVICE is cuda but no CUDA device is available; add 'MODEL.DEVICE cpu' "
                               "to the command line to run on the CPU")
        return torch.device("cuda", get_local_rank()) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise ValueError(f"MODEL.DEVICE {name!r}: expected cpu or cuda")
    return torch.device("cpu")


def choose_seed(cfg: CfgNode) -> int:
    """SEED, or (SEED < 0, as detectron2's default) a fresh random one that every rank shares."""
    seed = int(cfg.SEED)
    if seed < 0:
        seed = secrets.randbelow(2**31)
    return int(broadcast_object(seed))


def step_seed(seed: int, iteration: int, rank: int) -> int:
    """The torch seed of one training step: the matcher's and loss's point sampling and drop-path
    depend only on (run seed, iteration, rank), so a resumed run repeats them exactly."""
    return int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0])


def collect_env_info() -> str:
    cuda = (f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
            + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available() else "no CUDA")
    return (f"python {platform.python_version()}, torch {torch.__version__}, {cuda}, "
            f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
            f"rank {get_rank()} of {get_world_size()}")


def dump_config(cfg: CfgNode, output_dir: str | Path) -> Path:
    """The full merged config as YAML: ``--config-file OUTPUT_DIR/config.yaml`` replays the run."""
    path = Path(output_dir) / CONFIG_DUMP
    with atomic_open(path, "w") as handle:
        handle.write(cfg.dump())
    return path


@contextlib.contextmanager
def run_logging(output_dir: str | Path, *, console: bool = False) -> Iterator[None]:
    """Log to ``OUTPUT_DIR/log.txt`` (``log.txt.rank<N>`` for other ranks) while the block runs.

    ``console`` also adds a stderr handler (INFO on rank 0, WARNING elsewhere); in-process callers
    keep their own console logging and get only the file.
    """
    remove = add_log_handlers(output_dir, console=console)
    try:
        yield
    finally:
        remove()


def add_log_handlers(output_dir: str | Path, *, console: bool = False) -> Callable[[], None]:
    rank = get_rank()
    root = logging.getLogger()
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = []
    path = Path(output_dir) / ("log.txt" if rank == 0 else f"log.txt.rank{rank}")
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    handlers.append(file_handler)
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        handlers.append(stream)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    previous_level = root.level
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)

    def remove() -> None:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)

    return remove


def prepare_run(cfg: CfgNode) -> None:
    """Rank 0: create OUTPUT_DIR, log the environment, dump ``config.yaml``."""
    if get_rank() != 0:
        return
    output_dir = Path(cfg.OUTPUT_DIR)
    output_dir.mkdir(parents=True, exist_ok=True)
    logger.info("environment: %s", collect_env_info())
    logger.info("full config saved to %s", dump_config(cfg, output_dir))
