"""Synthetic guardrail datasets (COCO json, optionally CVAT XML) for tests, training benchmark and demo.

No real images or weights can be downloaded here, so everything that needs labelled barrier photos
is fed from :func:`generate_dataset`. Every image is rendered from its own generator seeded with
``[seed, split id, index]``: the same triple gives byte-identical images and identical annotations
however many images are generated, in which order, or by how many worker processes.

``walk_runs`` (off by default) makes a split out of near-duplicate *walk-through runs* instead of
independent scenes (see ``synthetic_walk``); existing seeds render exactly as before either way.

CLI: ``python -m barrier_annotator.training.data.synthetic --out DIR [--train N] [--val N] [--size PX] [--seed S]
[--coco-mask-style rle|polygon|cvat] [--cvat-xml] [--walk-train 4x40,10x8,30x1] [--walk-val 60x1]``
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_util
from tqdm import tqdm

from mask2former.utils import atomic_write_json

from .synthetic_scene import CLASS_NAMES, SceneInstance, SyntheticScene, render_scene
from .synthetic_walk import describe as describe_runs
from .synthetic_walk import parse_lengths, render_walk_frame, run_positions, shape_rng

__all__ = [
    "CLASS_NAMES",
    "MASK_STYLES",
    "SPLITS",
    "DatasetPaths",
    "SceneInstance",
    "SyntheticScene",
    "dataset_overrides",
    "encode_segmentation",
    "generate_dataset",
    "image_shape",
    "main",
    "render_sample",
    "render_scene",
    "render_walk_sample",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
_SPLIT_IDS = {"train": 0, "val": 1}
MASK_STYLES = ("rle", "polygon", "cvat")
# (width, height) ratios: mostly camera landscape formats, portrait rarely.
_ASPECTS = ((4, 3), (16, 9), (3, 2), (3, 4))
_ASPECT_P = (0.5, 0.3, 0.12, 0.08)


@dataclass(frozen=True)
class DatasetPaths:
    """Where :func:`generate_dataset` wrote a dataset; ``images[split]`` is the COCO ``image_root``."""

    root: Path
    images: dict[str, Path] = field(default_factory=dict)
    annotations: dict[str, Path] = field(default_factory=dict)
    cvat_xml: dict[str, Path] = field(default_factory=dict)


def image_shape(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    """(height, width) with long side ``image_size`` and a camera-like aspect ratio drawn from ``rng``."""
    aw, ah = _ASPECTS[int(rng.choice(len(_ASPECTS), p=_ASPECT_P))]
    short = max(16, round(image_size * min(aw, ah) / max(aw, ah)))
    return (short, image_size) if aw >= ah else (image_size, short)


def render_sample(seed: int, split: str, index: int, image_size: int = 320) -> SyntheticScene:
    """The scene of image ``index`` of ``split``: what :func:`generate_dataset` writes (before JPEG)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0 or seed < 0:
        raise ValueError("seed and index must be non-negative")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    height, width = image_shape(rng, image_size)
    return render_scene(rng, height, width)


def render_walk_sample(seed: int, split: str, run: int, frame: int, length: int,
                       image_size: int = 320) -> SyntheticScene:
    """Frame ``frame`` of walk-through run ``run`` (``length`` frames) of ``split``: near-duplicates of
    the run's other frames (see ``synthetic_walk``)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if min(seed, run, frame) < 0:
        raise ValueError("seed, run and frame must be non-negative")
    shape = image_shape(shape_rng(seed, _SPLIT_IDS[split], run), image_size)
    return render_walk_frame(seed, _SPLIT_IDS[split], run, frame, length, shape)


def _mask_bbox(mask: np.ndarray) -> list[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Exact outer outlines along pixel edges (the product's one polygon convention), so thin parts keep their width."""
    from barrier_annotator.cvat import mask_to_polygons, tight_crop  # lazily, as the CVAT XML writer below

    found = tight_crop(mask)
    return [] if found is None else mask_to_polygons(*found, epsilon=0.0)


def _uncompressed_rle(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a run of zeros, as CVAT's (datumaro's) COCO export writes."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return ([0, *counts] if flat[0] else counts)


def encode_segmentation(mask: np.ndarray, style: str) -> tuple[Any, int]:
    """COCO ``segmentation`` and ``iscrowd`` for a bool mask in one of :data:`MASK_STYLES`.

    ``cvat`` mimics CVAT's COCO 1.0 export of mask shapes (whole-image uncompressed RLE, iscrowd 1)
    so loaders that drop crowd annotations lose those labels visibly in tests.
    """
    height, width = mask.shape
    if style == "rle":
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}, 0
    if style == "polygon":
        return _polygons(mask), 0
    if style == "cvat":
        return {"size": [height, width], "counts": _uncompressed_rle(mask)}, 1
    raise ValueError(f"coco_mask_style must be one of {MASK_STYLES}, got {style!r}")


@dataclass(frozen=True)
class _Job:
    """One image to render; small and picklable so worker processes get only this."""

    seed: int
    split: str
    index: int
    image_size: int
    jpeg_quality: int
    mask_style: str
    keep_crops: bool
    walk: tuple[int, int, int] | None = None  # (run, frame, run length) of a walk-through frame


# (label, tight mask crop, exclusive box x0, y0, x1, y1): CVAT's mask shape, without a full frame per instance
MaskCrop = tuple[str, np.ndarray, tuple[int, int, int, int]]


def _render_job(job: _Job) -> tuple[int, bytes, tuple[int, int], list[dict], list[MaskCrop]]:
    """Render, JPEG-encode and COCO-encode one image (runs in worker processes)."""
    if job.walk is None:
        scene = render_sample(job.seed, job.split, job.index, job.image_size)
    else:
        scene = render_walk_sample(job.seed, job.split, *job.walk, image_size=job.image_size)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, job.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {job.split} image {job.index}")
    annotations, crops = [], []
    for instance in scene.instances:
        segmentation, iscrowd = encode_segmentation(instance.mask, job.mask_style)
        bbox = _mask_bbox(instance.mask)
        annotations.append({"category_id": instance.class_id + 1, "segmentation": segmentation,
                            "area": float(instance.mask.sum()), "bbox": bbox, "iscrowd": iscrowd})
        if job.keep_crops:
            x0, y0, x1, y1 = (int(bbox[0]), int(bbox[1]), int(bbox[0] + bbox[2]), int(bbox[1] + bbox[3]))
            crops.append((instance.class_name, instance.mask[y0:y1, x0:x1].copy(), (x0, y0, x1, y1)))
    return job.index, jpeg.tobytes(), scene.image.shape[:2], annotations, crops


def _run_jobs(jobs: Sequence[_Job], workers: int) -> Iterator[tuple]:
    if workers <= 1 or len(jobs) < 2:
        yield from map(_render_job, jobs)
        return
    # spawn, not fork: callers may hold torch/OpenMP threads, which fork can deadlock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_render_job, jobs, chunksize=4)


def _write_cvat_xml(path: Path, images: list[dict], masks: dict[int, list[MaskCrop]]) -> None:
    """CVAT for images 1.1 with one mask shape per instance, through the project's CVAT module."""
    from barrier_annotator.cvat import CvatDocument  # lazily: plain COCO generation must not need it

    document = CvatDocument.new(list(CLASS_NAMES), task_name=f"synthetic {path.stem}")
    for image in images:
        entry = document.add_image(image["file_name"], image["width"], image["height"], image["id"] - 1)
        for label, crop, box in masks[image["id"]]:
            entry.add_mask(label, crop, box, source="manual")
    document.save(path)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    *,
    num_train: int = 300,
    num_val: int = 60,
    image_size: int = 320,
    seed: int = 0,
    jpeg_quality: int = 92,
    coco_mask_style: str = "rle",
    write_cvat_xml: bool = False,
    workers: int = 0,
    progress: bool = True,
    walk_runs: Mapping[str, Sequence[int]] | None = None,
) -> DatasetPaths:
    """Write ``out_dir/images/{train,val}/NNNNNN.jpg`` and ``out_dir/annotations/instances_{split}.json``.

    COCO categories are ids 1..4 in :data:`CLASS_NAMES` order; ``file_name`` is relative to
    ``images/{split}``; ``area`` is the mask's pixel count and ``bbox`` its tight ``[x, y, w, h]``.
    ``write_cvat_xml`` adds ``annotations/{split}.xml`` (CVAT for images 1.1, mask shapes).
    ``workers`` > 1 renders in that many processes (0: up to 4 for larger datasets); the output
    does not depend on it. Existing files of the same names are overwritten.

    ``walk_runs`` maps a split to the lengths of its walk-through runs (off by default): that split's
    images are then the runs' frames in order (their count must be the sum of the lengths), and
    each COCO image entry carries ``"walk": {"run": r, "frame": f, "length": n}``.
    """
    if coco_mask_style not in MASK_STYLES:
        raise ValueError(f"coco_mask_style must be one of {MASK_STYLES}, got {coco_mask_style!r}")
    if num_train < 0 or num_val < 0:
        raise ValueError("image counts must be non-negative")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 px, got {image_size}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    walk_runs = {split: tuple(int(n) for n in lengths) for split, lengths in (walk_runs or {}).items()}
    for split, lengths in walk_runs.items():
        count = {"train": num_train, "val": num_val}.get(split)
        if count is None:
            raise ValueError(f"walk_runs: unknown split {split!r}; expected one of {SPLITS}")
        if sum(lengths) != count or min(lengths, default=1) < 1:
            raise ValueError(f"walk_runs[{split!r}]: run lengths sum to {sum(lengths)}, the split has {count} images")
    if workers <= 0:
        workers = min(4, os.cpu_count() or 1) if num_train + num_val >= 64 else 1
    root = Path(out_dir)
    paths = DatasetPaths(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "guardrail"}
                  for i, name in enumerate(CLASS_NAMES)]
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        walks = run_positions(walk_runs[split]) if split in walk_runs else [None] * count
        jobs = [_Job(seed, split, i, image_size, jpeg_quality, coco_mask_style, write_cvat_xml, walk)
                for i, walk in enumerate(walks)]
        if split in walk_runs:
            logger.info("synthetic %s: walk-through runs: %s", split, describe_runs(walk_runs[split]))
        images: list[dict] = []
        annotations: list[dict] = []
        masks: dict[int, list[MaskCrop]] = {}
        per_class: Counter[str] = Counter()
        bar = tqdm(_run_jobs(jobs, workers), total=count, desc=f"synthetic {split}", unit="img",
                   disable=not progress)
        for index, jpeg, (height, width), anns, image_masks in bar:
            file_name = f"{index:06d}.jpg"
            (image_dir / file_name).write_bytes(jpeg)
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            if jobs[index].walk is not None:
                run, frame, length = jobs[index].walk
                images[-1]["walk"] = {"run": run, "frame": frame, "length": length}
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
                per_class[CLASS_NAMES[ann["category_id"] - 1]] += 1
            masks[image_id] = image_masks
        coco = {
            "info": {"description": "barrier-annotator synthetic guardrails", "version": "1",
                     "seed": seed, "split": split, "mask_style": coco_mask_style},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        json_path = root / "annotations" / f"instances_{split}.json"
        atomic_write_json(json_path, coco, indent=None, sync_directory=False)
        paths.images[split] = image_dir
        paths.annotations[split] = json_path
        if write_cvat_xml:
            xml_path = root / "annotations" / f"{split}.xml"
            _write_cvat_xml(xml_path, images, masks)
            paths.cvat_xml[split] = xml_path
        logger.info("synthetic %s: %d images, %d instances (%s) -> %s", split, count, len(annotations),
                    ", ".join(f"{name} {per_class[name]}" for name in CLASS_NAMES), json_path)
    return paths


def dataset_overrides(root: str | os.PathLike[str], prefix: str) -> list[str]:
    """Config overrides that register ``root`` (as :func:`generate_dataset` wrote it) as
    ``<prefix>_train`` / ``<prefix>_val`` and train and test on them with the synthetic classes."""
    root = Path(root)
    entries = [[f"{prefix}_{split}", str(root / f"annotations/instances_{split}.json"), str(root / "images" / split)]
               for split in SPLITS]
    return ["DATASETS.REGISTER", str(entries), "DATASETS.TRAIN", f"('{prefix}_train',)",
            "DATASETS.TEST", f"('{prefix}_val',)", "DATASETS.CLASS_NAMES", str(list(CLASS_NAMES))]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m barrier_annotator.training.data.synthetic",
                                     description="Write a synthetic guardrail instance-segmentation dataset.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--train", type=int, default=300, help="training images (default 300)")
    parser.add_argument("--val", type=int, default=60, help="validation images (default 60)")
    parser.add_argument("--size", type=int, default=320, help="long image side in px (default 320)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jpeg-quality", type=int, default=92)
    parser.add_argument("--coco-mask-style", choices=MASK_STYLES, default="rle")
    parser.add_argument("--cvat-xml", action="store_true", help="also write annotations/{split}.xml")
    parser.add_argument("--workers", type=int, default=0, help="render processes (0: auto)")
    parser.add_argument("--walk-train", type=parse_lengths, default=None, metavar="LENGTHS",
                        help="train split as walk-through runs of these lengths, e.g. 4x40,10x8,30x1 "
                             "(their sum replaces --train)")
    parser.add_argument("--walk-val", type=parse_lengths, default=None, metavar="LENGTHS",
                        help="val split as walk-through runs (e.g. 60x1: single views; the sum replaces --val)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    walk_runs = {split: lengths for split, lengths in (("train", args.walk_train), ("val", args.walk_val)) if lengths}
    if "train" in walk_runs:
        args.train = sum(walk_runs["train"])
    if "val" in walk_runs:
        args.val = sum(walk_runs["val"])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = generate_dataset(args.out, num_train=args.train, num_val=args.val, image_size=args.size,
                                 seed=args.seed, jpeg_quality=args.jpeg_quality,
                                 coco_mask_style=args.coco_mask_style, write_cvat_xml=args.cvat_xml,
                                 workers=args.workers, progress=not args.no_progress, walk_runs=walk_runs)
    except ValueError as error:
        parser.error(str(error))
    for split in SPLITS:
        print(f"{split}: images {paths.images[split]}  annotations {paths.annotations[split]}"
              + (f"  cvat {paths.cvat_xml[split]}" if split in paths.cvat_xml else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
