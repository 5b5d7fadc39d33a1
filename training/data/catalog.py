"""Dataset names -> annotation file + image folder, from the config or the command line.

detectron2 users write ``DATASETS.TRAIN: ("safetybarrier_train",)`` and register datasets in
code. Here a name resolves, in order, to:

1. an explicit registration: ``DATASETS.REGISTER`` entries ``[name, annotations, images]`` in
   the config, ``--dataset NAME ANNOTATIONS IMAGES`` on the command line, or
   :func:`register_dataset` in code. The format comes from the annotation file's suffix
   (``.json`` COCO, ``.xml`` CVAT for images 1.1). Relative paths resolve against
   ``DATASETS.ROOT``.
2. the seed's layout under ``DATASETS.ROOT`` (default ``$DETECTRON2_DATASETS``, else
   ``./datasets``), for a name ``<dataset>_<split>``:
   ``<root>/<dataset>/annotations/instances_<split>.json`` + ``<root>/<dataset>/images/<split>``,
   or ``<root>/<dataset>/annotations/<split>.xml`` + the same images folder, or an unpacked
   CVAT export ``<root>/<name>/annotations.xml`` + ``<root>/<name>/images``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .coco import DatasetFormatError, load_coco_instances
from .cvat_xml import load_cvat_xml
from .dataset_records import DatasetReport, ImageRecord

logger = logging.getLogger(__name__)

FORMATS = {".json": "coco", ".xml": "cvat"}


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str  # "coco" | "cvat"
    annotations: Path
    images: Path


class DatasetCatalog:
    """Registered datasets plus layout-based resolution under a root folder."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser().absolute() if root else default_root()
        self._specs: dict[str, DatasetSpec] = {}

    def register(self, name: str, annotations: str | os.PathLike[str], images: str | os.PathLike[str],
                 format: str | None = None) -> DatasetSpec:
        """Register (or replace, with a log line) ``name``; relative paths resolve against the root."""
        annotations, images = self._absolute(annotations), self._absolute(images)
        kind = format or FORMATS.get(annotations.suffix.lower())
        if kind not in FORMATS.values():
            raise ValueError(f"dataset {name!r}: cannot tell the format of {annotations} "
                             f"(expected a .json COCO or .xml CVAT file)")
        if name in self._specs and self._specs[name] != DatasetSpec(name, kind, annotations, images):
            logger.info("dataset %r re-registered: %s", name, annotations)
        spec = DatasetSpec(name, kind, annotations, images)
        self._specs[name] = spec
        return spec

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str) -> DatasetSpec:
        """The registered spec, else the layout under the root; KeyError lists what was tried."""
        if name in self._specs:
            return self._specs[name]
        tried = []
        for spec in self._layout_candidates(name):
            tried.append(str(spec.annotations))
            if spec.annotations.is_file():
                logger.info("dataset %r resolved under %s: %s", name, self.root, spec.annotations)
                return spec
        raise KeyError(f"dataset {name!r} is not registered ({', '.join(self.names()) or 'none are'}) "
                       f"and none of these files exists: {', '.join(tried)}. Register it with "
                       f"--dataset {name} ANNOTATIONS IMAGES, DATASETS.REGISTER, or set DATASETS.ROOT")

    def _layout_candidates(self, name: str) -> list[DatasetSpec]:
        candidates = []
        if "_" in name:
            dataset, split = name.rsplit("_", 1)
            base = self.root / dataset
            images = base / "images" / split
            folder = base / "annotations"
            candidates.append(DatasetSpec(name, "coco", folder / f"instances_{split}.json", images))
            candidates.append(DatasetSpec(name, "cvat", folder / f"{split}.xml", images))
        export = self.root / name
        candidates.append(DatasetSpec(name, "cvat", export / "annotations.xml", export / "images"))
        return candidates

    def _absolute(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path).expanduser()
        return (path if path.is_absolute() else self.root / path).absolute()


def default_root() -> Path:
    """``$DETECTRON2_DATASETS`` (detectron2's variable), else ``./datasets``."""
    return Path(os.environ.get("DETECTRON2_DATASETS") or "datasets").expanduser().absolute()


_REGISTERED: dict[str, tuple[str, str, str | None]] = {}


def register_dataset(name: str, annotations: str | os.PathLike[str], images: str | os.PathLike[str],
                     format: str | None = None) -> None:
    """Code-level registration (like detectron2's ``register_coco_instances``); absolute paths advised."""
    _REGISTERED[name] = (os.fspath(annotations), os.fspath(images), format)


def add_dataset_config(cfg: Any) -> Any:
    """Add this module's keys if missing: ``DATASETS.ROOT`` ("") and ``DATASETS.REGISTER`` ([])."""
    was_frozen = cfg.is_frozen()
    cfg.defrost()
    if "ROOT" not in cfg.DATASETS:
        cfg.DATASETS.ROOT = ""
    if "REGISTER" not in cfg.DATASETS:
        cfg.DATASETS.REGISTER = []
    if was_frozen:
        cfg.freeze()
    return cfg


def add_dataset_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--dataset NAME ANNOTATIONS IMAGES`` (repeatable) and ``--datasets-root DIR``."""
    parser.add_argument("--dataset", nargs=3, action="append", default=[],
                        metavar=("NAME", "ANNOTATIONS", "IMAGES"),
                        help="register a dataset: COCO .json or CVAT for images 1.1 .xml, and its "
                             "image folder (repeatable); NAME is then usable in DATASETS.TRAIN/TEST")
    parser.add_argument("--datasets-root", default=None, metavar="DIR",
                        help="folder holding <dataset>/annotations and <dataset>/images "
                             "(DATASETS.ROOT; default $DETECTRON2_DATASETS or ./datasets)")
    return parser


def apply_dataset_arguments(cfg: Any, args: argparse.Namespace) -> Any:
    """Write the flags into the (unfrozen) config as absolute paths, so the dumped config replays."""
    add_dataset_config(cfg)
    if getattr(args, "datasets_root", None):
        cfg.DATASETS.ROOT = str(Path(args.datasets_root).expanduser().absolute())
    entries = [list(entry) for entry in cfg.DATASETS.REGISTER]
    for name, ann_path, image_dir in getattr(args, "dataset", None) or []:
        entries = [e for e in entries if e[0] != name]
        entries.append([name, str(Path(ann_path).expanduser().absolute()),
                        str(Path(image_dir).expanduser().absolute())])
    cfg.DATASETS.REGISTER = entries
    return cfg


def catalog_from_config(cfg: Any) -> DatasetCatalog:
    """Code registrations, then ``DATASETS.REGISTER`` entries (config wins), under ``DATASETS.ROOT``."""
    datasets = cfg.DATASETS
    catalog = DatasetCatalog(datasets.get("ROOT", "") or None)
    for name, (ann_path, image_dir, kind) in _REGISTERED.items():
        catalog.register(name, ann_path, image_dir, kind)
    for entry in datasets.get("REGISTER", []):
        if len(entry) not in (3, 4):
            raise ValueError(f"DATASETS.REGISTER entry {entry!r}: expected [name, annotations, images]"
                             " (optionally a 4th: coco or cvat)")
        catalog.register(*entry)
    return catalog


def load_dataset(spec: DatasetSpec, class_names: Sequence[str]) -> tuple[list[ImageRecord], DatasetReport]:
    """Load one dataset with the loader of its format."""
    if not spec.images.is_dir():
        raise DatasetFormatError(f"dataset {spec.name!r}: image folder not found: {spec.images}")
    loader = load_coco_instances if spec.format == "coco" else load_cvat_xml
    return loader(spec.annotations, spec.images, class_names, dataset_name=spec.name)


def load_datasets(names: Sequence[str], catalog: DatasetCatalog, class_names: Sequence[str],
                  filter_empty: bool = False) -> list[ImageRecord]:
    """Concatenate datasets (DATASETS.TRAIN / TEST), logging each load report.

    ``filter_empty`` drops images without any instance (DATALOADER.FILTER_EMPTY_ANNOTATIONS,
    applied to training sets only, as detectron2 does).
    """
    if not names:
        raise ValueError("no dataset named (DATASETS.TRAIN / DATASETS.TEST is empty)")
    records: list[ImageRecord] = []
    for name in names:
        loaded, report = load_dataset(catalog.get(name), class_names)
        report.log()
        records.extend(loaded)
    if filter_empty:
        kept = [r for r in records if r.instances]
        if len(kept) != len(records):
            logger.info("removed %d images without instances (DATALOADER.FILTER_EMPTY_ANNOTATIONS); "
                        "%d left", len(records) - len(kept), len(kept))
        records = kept
    if not records:
        raise ValueError(f"datasets {list(names)} have no usable image")
    return records
