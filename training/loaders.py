"""Datasets from the config and the resumable training batch stream.

Batch ``k`` of a run is a pure function of (seed, k, rank): the sampler's global stream is
seeded, augmentation is seeded per stream position, and aspect-ratio grouping (landscape and
portrait images batched apart, as detectron2's ``AspectRatioGroupedDataset``, so little compute
goes to padding) is replayed from the records' sizes alone. Resuming at iteration ``k``
therefore feeds exactly the batches an uninterrupted run would have seen, without decoding a
single skipped image.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from fvcore.common.config import CfgNode
from torch.utils.data import DataLoader, Sampler

from .data.catalog import catalog_from_config, load_datasets
from .data.dataset import InstanceDataset, InstanceMapper, collate
from .data.dataset_records import ImageRecord, count_instances
from .data.sampler import TrainingSampler
from .distributed import get_rank, get_world_size

logger = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset name that resolves to no annotation file; the message lists the paths tried."""


def _load(names: Sequence[str], cfg: CfgNode, class_names: Sequence[str], filter_empty: bool) -> list[ImageRecord]:
    try:
        return load_datasets(names, catalog_from_config(cfg), class_names, filter_empty=filter_empty)
    except KeyError as error:  # the catalog's "not registered, tried ..." message
        raise DatasetNotFoundError(str(error.args[0]) if error.args else str(error)) from None


def load_train_records(cfg: CfgNode, class_names: Sequence[str]) -> list[ImageRecord]:
    """DATASETS.TRAIN, without images that have no instance (DATALOADER.FILTER_EMPTY_ANNOTATIONS)."""
    records = _load(cfg.DATASETS.TRAIN, cfg, class_names, bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS))
    counts = count_instances(records, class_names)
    logger.info("training on %d images: %s", len(records), ", ".join(f"{k} {v}" for k, v in counts.items()))
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        logger.warning("no training instance of class(es) %s: the model cannot learn them", empty)
    return records


def load_test_records(cfg: CfgNode, dataset_name: str, class_names: Sequence[str]) -> list[ImageRecord]:
    return _load([dataset_name], cfg, class_names, filter_empty=False)


def per_rank_batch_size(cfg: CfgNode, world_size: int | None = None) -> int:
    """SOLVER.IMS_PER_BATCH is the total over all workers, as in detectron2."""
    world_size = get_world_size() if world_size is None else world_size
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    if total < world_size or total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {total} must be a multiple of the number of workers ({world_size})")
    return total // world_size


class GroupedBatchSampler(Sampler):
    """Batches of sampler keys from an infinite :class:`TrainingSampler` stream, starting at batch ``start``.

    With ``group_by_aspect`` a batch only holds images of one orientation (width >= height or
    not); the grouping buffers are rebuilt on resume by replaying the stream's indices.
    """

    def __init__(self, sampler: TrainingSampler, records: Sequence[ImageRecord], batch_size: int,
                 group_by_aspect: bool = True, start: int = 0) -> None:
        self.sampler, self.batch_size, self.start = sampler, batch_size, start
        self.group_by_aspect = group_by_aspect
        self.groups = [int(r.width >= r.height) if group_by_aspect else 0 for r in records]

    def _batches(self) -> Iterator[list[Any]]:
        buckets: dict[int, list[Any]] = {0: [], 1: []}
        for key in self.sampler:
            bucket = buckets[self.groups[key[0]]]
            bucket.append(key)
            if len(bucket) == self.batch_size:
                yield list(bucket)
                bucket.clear()

    def __iter__(self) -> Iterator[list[Any]]:
        if not self.group_by_aspect:
            # O(1) resume: the stream position of batch k is known.
            self.sampler.start = self.start * self.batch_size
            stream = iter(self.sampler)
            while True:
                yield [next(stream) for _ in range(self.batch_size)]
        batches = self._batches()
        for _ in range(self.start):
            next(batches)
        yield from batches


def _init_worker(worker_id: int) -> None:
    # Loader workers only decode and resize: torch threads there would compete with training.
    torch.set_num_threads(1)
    # Ctrl-C is for the training process, which finishes its iteration and saves; workers that
    # died of it first would turn that clean stop into a "worker exited unexpectedly" error.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_start_method(num_workers: int) -> str | None:
    """``forkserver`` for loader workers: forking a process that already runs OpenVINO or other
    native thread pools (the predictor, an earlier evaluation) can deadlock or crash the child."""
    if num_workers <= 0:
        return None
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def build_train_loader(cfg: CfgNode, records: Sequence[ImageRecord], seed: int, start_iter: int = 0,
                       num_workers: int | None = None) -> DataLoader:
    """An endless loader of ``(images, targets)`` lists for this rank, positioned at ``start_iter``."""
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name != "TrainingSampler":
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN {sampler_name!r} is not supported; use TrainingSampler")
    dataset = InstanceDataset(records, InstanceMapper.from_config(cfg))
    sampler = TrainingSampler(len(records), seed, shuffle=True, rank=get_rank(), world_size=get_world_size())
    batch_sampler = GroupedBatchSampler(sampler, records, per_rank_batch_size(cfg),
                                        bool(cfg.DATALOADER.ASPECT_RATIO_GROUPING), start=start_iter)
    workers = int(cfg.DATALOADER.NUM_WORKERS if num_workers is None else num_workers)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate,
                      worker_init_fn=_init_worker if workers else None,
                      pin_memory=str(cfg.MODEL.DEVICE).startswith("cuda"),
                      prefetch_factor=2 if workers else None, persistent_workers=False,
                      multiprocessing_context=worker_start_method(workers))
