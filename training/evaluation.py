"""COCO mask AP of predicted ``Instances`` against val records, with pycocotools.

Numbers follow detectron2's ``COCOEvaluator`` for ``segm``: percent (0..100), keys ``AP``,
``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and ``AP-<class>`` (plus ``AP50-<class>``), max
100 detections per image, NaN where there is nothing to measure (a class without ground
truth). Every ground-truth instance counts as ``iscrowd=0``: our loaders keep CVAT's
``iscrowd: 1`` mask shapes as instances for training, so evaluation must score them as
instances too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mask2former.structures import Instances
from mask2former.utils import atomic_open, dumps_json

from .data.dataset_records import ImageRecord

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def encode_mask(mask: np.ndarray) -> dict:
    """Bool HxW -> compressed RLE with a str ``counts`` (json-able)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


class CocoMaskEvaluator:
    """Collect predictions image by image (as RLE: memory stays small), then score them.

    Under torch.distributed each rank processes its shard; :meth:`evaluate` gathers on rank 0,
    which returns the metrics (other ranks return ``{}``).
    """

    def __init__(self, records: Sequence[ImageRecord], class_names: Sequence[str],
                 max_dets_per_image: int = 100) -> None:
        self.class_names = tuple(class_names)
        self.records = {r.image_id: r for r in records}
        if len(self.records) != len(records):
            raise ValueError("image ids of the evaluation records are not unique (one dataset at a time)")
        self.max_dets = max_dets_per_image
        self._predictions: list[dict] = []
        self._seen: set[int] = set()

    def reset(self) -> None:
        self._predictions, self._seen = [], set()

    def process(self, image_id: int, instances: Instances) -> None:
        """Add one image's predictions (masks at the image's original size)."""
        record = self.records.get(image_id)
        if record is None:
            raise KeyError(f"image id {image_id} is not in the evaluation set")
        if tuple(instances.image_size) != (record.height, record.width):
            raise ValueError(f"{record.file_name}: predictions are {instances.image_size}, the image is "
                             f"{(record.height, record.width)}: predict at the original size")
        class_index = _class_mapping(instances.class_names, self.class_names)
        self._seen.add(image_id)
        for mask, score, class_id in zip(instances.masks, instances.scores, instances.class_ids, strict=True):
            rle = encode_mask(mask)
            self._predictions.append({"image_id": image_id, "category_id": class_index[int(class_id)] + 1,
                                      "segmentation": rle, "score": float(score)})

    def evaluate(self) -> dict[str, float]:
        predictions, seen = self._predictions, self._seen
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (predictions, seen))
            if dist.get_rank() != 0:
                return {}
            predictions = [p for part, _ in gathered for p in part]
            seen = set().union(*(s for _, s in gathered))
        missing = len(self.records) - len(seen)
        if missing:
            logger.warning("%d of %d evaluation images have no prediction entry; scored as empty",
                           missing, len(self.records))
        return coco_mask_metrics(list(self.records.values()), predictions, self.class_names, self.max_dets)


def evaluate_instances(records: Sequence[ImageRecord], predictions: Mapping[int, Instances],
                       class_names: Sequence[str], max_dets_per_image: int = 100) -> dict[str, float]:
    """One-call form: ``predictions`` maps image id -> Instances."""
    evaluator = CocoMaskEvaluator(records, class_names, max_dets_per_image)
    for image_id, instances in predictions.items():
        evaluator.process(image_id, instances)
    return evaluator.evaluate()


def ground_truth_coco(records: Sequence[ImageRecord], class_names: Sequence[str]) -> COCO:
    """Records as an in-memory COCO ground truth (category ids = class index + 1)."""
    images = [{"id": r.image_id, "height": r.height, "width": r.width, "file_name": r.file_name}
              for r in records]
    annotations = []
    for record in records:
        for instance in record.instances:
            rle = encode_mask(instance.mask.decode(record.height, record.width))
            annotations.append({"id": len(annotations) + 1, "image_id": record.image_id,
                                "category_id": instance.category_id + 1, "segmentation": rle,
                                "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
                                "iscrowd": 0})
    return _coco({"images": images, "annotations": annotations, "categories": _categories(class_names)})


def coco_mask_metrics(records: Sequence[ImageRecord], predictions: Sequence[dict],
                      class_names: Sequence[str], max_dets_per_image: int = 100) -> dict[str, float]:
    """COCOeval ``segm`` over ``predictions`` (dicts with image_id, category_id, segmentation RLE, score)."""
    gt = ground_truth_coco(records, class_names)
    detections = []
    for index, pred in enumerate(predictions):
        rle = pred["segmentation"]
        detections.append({**pred, "id": index + 1, "area": float(mask_util.area(rle)),
                           "bbox": mask_util.toBbox(rle).tolist(), "iscrowd": 0})
    dt = _coco({"images": gt.dataset["images"], "annotations": detections,
                "categories": gt.dataset["categories"]})
    evaluation = COCOeval(gt, dt, iouType="segm")
    evaluation.params.maxDets = [1, 10, max(100, max_dets_per_image)]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):  # pycocotools prints; keep it in the log instead
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    logger.info("COCOeval segm (%d images, %d predictions):\n%s", len(records), len(detections),
                output.getvalue().rstrip())
    results = {key: float(value * 100) if value >= 0 else math.nan
               for key, value in zip(SUMMARY_KEYS, evaluation.stats[:6], strict=True)}
    precision = evaluation.eval["precision"]  # [iou, recall, class, area, max dets]
    for index, name in enumerate(class_names):
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        results[f"AP-{name}"] = float(values.mean() * 100) if values.size else math.nan
    # Per-class AP at IoU 0.5 (not in detectron2's table): thin bars are often found but drawn a
    # few pixels off, which AP over 0.5:0.95 hides and AP50 shows.
    for index, name in enumerate(class_names):
        values = precision[0, :, index, 0, -1]
        values = values[values > -1]
        results[f"AP50-{name}"] = float(values.mean() * 100) if values.size else math.nan
    return results


def write_metrics(path: str | os.PathLike[str], results: Mapping[str, float], iteration: int | None = None,
                  prefix: str = "segm") -> None:
    """Append one JSON line ``{"iteration": N, "segm/AP": ...}`` to ``path`` (detectron2's
    ``metrics.json`` is JSON lines), rewriting the file atomically. NaN and infinities are written
    as null (:func:`mask2former.utils.dumps_json`)."""
    line: dict[str, Any] = {} if iteration is None else {"iteration": int(iteration)}
    line.update({f"{prefix}/{key}" if prefix else key: None if value is None else float(value)
                 for key, value in results.items()})
    previous = b""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        previous = handle.read()
    if previous and not previous.endswith(b"\n"):
        previous += b"\n"
    with atomic_open(path, "wb") as handle:
        handle.write(previous)
        handle.write(dumps_json(line).encode("utf-8") + b"\n")


def format_results(results: Mapping[str, float]) -> str:
    """A compact table for logs, per-class AP included."""
    width = max((len(k) for k in results), default=0)
    return "\n".join(f"{key:<{width}}  {value:6.2f}" for key, value in results.items())


def _class_mapping(predicted: Sequence[str], expected: Sequence[str]) -> list[int]:
    if tuple(predicted) == tuple(expected):
        return list(range(len(expected)))
    index = {name: i for i, name in enumerate(expected)}
    unknown = [name for name in predicted if name not in index]
    if unknown:
        raise ValueError(f"predicted classes {unknown} are not among the evaluated classes {list(expected)}")
    return [index[name] for name in predicted]


def _categories(class_names: Sequence[str]) -> list[dict]:
    return [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
