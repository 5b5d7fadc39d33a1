"""COCO mask AP with pycocotools: perfect predictions, perturbed ones, missing classes, metrics.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from barrier_annotator.training.data.dataset_records import BitmaskSource, ImageRecord, InstanceRecord, PolygonSource
from barrier_annotator.training.evaluation import CocoMaskEvaluator, evaluate_instances, write_metrics
from mask2former.structures import Instances

CLASSES = ("rail_top", "rail_mid", "toeboard", "vertical_post")
H, W = 64, 96


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _records() -> list[ImageRecord]:
    """Two images; classes 0-2 present (one as a polygon), vertical_post (3) never."""
    first = (InstanceRecord(0, BitmaskSource(_rect(0, 0, 40, 10), (0, 0, W, H))),
             InstanceRecord(1, BitmaskSource(_rect(0, 20, 60, 28), (0, 0, W, H))),
             InstanceRecord(2, PolygonSource((np.array([10.0, 40, 50, 40, 50, 60, 10, 60]),))))
    second = (InstanceRecord(0, BitmaskSource(_rect(50, 5, 90, 15), (0, 0, W, H))),
              InstanceRecord(2, BitmaskSource(_rect(5, 30, 30, 60), (0, 0, W, H))))
    return [ImageRecord("a.png", H, W, 11, first), ImageRecord("b.png", H, W, 12, second)]


def _ground_truth_as_predictions(records, scores=None) -> dict[int, Instances]:
    out = {}
    for record in records:
        masks = np.stack([i.mask.decode(H, W) for i in record.instances])
        classes = [i.category_id for i in record.instances]
        score = np.full(len(classes), 0.9) if scores is None else scores
        out[record.image_id] = Instances.from_masks(masks, score, classes, CLASSES)
    return out


def test_ground_truth_fed_back_scores_perfectly():
    records = _records()
    results = evaluate_instances(records, _ground_truth_as_predictions(records), CLASSES)
    for key in ("AP", "AP50", "AP75", "AP-rail_top", "AP-rail_mid", "AP-toeboard"):
        assert results[key] == pytest.approx(100.0), key
    assert math.isnan(results["AP-vertical_post"])  # no ground truth: NaN, not a crash or a 0


def test_perturbed_predictions_score_lower():
    records = _records()
    predictions = _ground_truth_as_predictions(records)
    first = predictions[11]
    shifted = np.roll(first.masks, 6, axis=2)  # every mask of image 11 moved 6 px right
    predictions[11] = Instances.from_masks(shifted, first.scores, first.class_ids, CLASSES)
    second = predictions[12]
    wrong = second.class_ids.copy()
    wrong[0] = 3  # the rail_top of image 12 labelled vertical_post
    predictions[12] = Instances.from_masks(second.masks, second.scores, wrong, CLASSES)
    results = evaluate_instances(records, predictions, CLASSES)
    assert 0 < results["AP"] < 90
    assert results["AP50"] > results["AP75"]
    assert results["AP-rail_top"] < 100


def test_no_predictions_and_missing_images_give_zero_not_errors():
    records = _records()
    evaluator = CocoMaskEvaluator(records, CLASSES)
    evaluator.process(11, Instances.empty((H, W), CLASSES))
    results = evaluator.evaluate()
    assert results["AP"] == 0.0 and results["AP-rail_top"] == 0.0
    assert math.isnan(results["AP-vertical_post"])


def test_predictions_in_another_class_order_are_mapped_by_name():
    records = _records()
    reordered = tuple(reversed(CLASSES))
    predictions = {}
    for image_id, inst in _ground_truth_as_predictions(records).items():
        predictions[image_id] = Instances.from_masks(inst.masks, inst.scores, 3 - inst.class_ids, reordered)
    assert evaluate_instances(records, predictions, CLASSES)["AP"] == pytest.approx(100.0)


def test_wrong_size_predictions_are_rejected():
    evaluator = CocoMaskEvaluator(_records(), CLASSES)
    with pytest.raises(ValueError, match="original size"):
        evaluator.process(11, Instances.empty((H // 2, W // 2), CLASSES))
    with pytest.raises(KeyError):
        evaluator.process(99, Instances.empty((H, W), CLASSES))


def test_write_metrics_appends_json_lines(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    write_metrics(path, {"AP": 50.0, "AP-vertical_post": math.nan}, iteration=99)
    write_metrics(path, {"AP": 60.0}, iteration=199)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"iteration": 99, "segm/AP": 50.0, "segm/AP-vertical_post": None},
                     {"iteration": 199, "segm/AP": 60.0}]
