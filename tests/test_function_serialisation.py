"""The detector answer as the handler writes it in one buffer: the same items, pixel for pixel,
as the plain per-item encoders (lists of ints, ``json.dumps``) give, for many instances of one
frame; and the cheap paths of the polygon tracing (one-boundary crops, RLE IoU) choose what the
full ones would. Speed itself is measured by ``benchmarks/bench_handler.py``."""

from __future__ import annotations

import json

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

from barrier_annotator.cvat import detector_shape, mask_to_polygon, polygon_to_mask, tight_crop
from barrier_annotator.cvat.payloads import detector_response_json, detector_shape_json
from barrier_annotator.cvat.polygons import MIN_FIDELITY
from barrier_annotator.serving import ModelHandler
from mask2former.structures import Instances
from tests.serving_fakes import FakePredictor, encode_frame, iou, server_decode_detector_mask

NAMES = ("rail_top", "rail_mid", "toeboard", "vertical_post")


def barrier_frame(count: int, height: int = 270, width: int = 480, seed: int = 5) -> Instances:
    """Slanted rails and toeboards across the frame and short posts, edges a little ragged."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, height, width), dtype=bool)
    for index in range(count):
        canvas = np.zeros((height, width), np.uint8)
        post = index % 4 == 3
        size = (rng.uniform(20, 80), rng.uniform(3, 6)) if post else (rng.uniform(0.5, 1.0) * width,
                                                                     rng.uniform(2, 12))
        angle = rng.uniform(80, 100) if post else rng.uniform(-10, 10)
        center = (rng.uniform(0.2, 0.8) * width, rng.uniform(0.1, 0.9) * height)
        cv2.fillPoly(canvas, [np.round(cv2.boxPoints((center, size, angle))).astype(np.int32)], 1)
        masks[index] = canvas.astype(bool) ^ (rng.random((height, width)) < 0.002)  # specks and pinholes
    scores = np.sort(rng.uniform(0.5, 1.0, count))[::-1]
    return Instances.from_masks(masks, scores, np.array([i % 4 for i in range(count)]), NAMES)


def test_the_answer_equals_the_per_item_encoding_for_a_frame_of_many_instances() -> None:
    instances = barrier_frame(24)
    height, width = instances.image_size
    frame = encode_frame(np.zeros((height, width, 3), np.uint8))
    body = ModelHandler(FakePredictor(instances)).handle({"image": frame, "threshold": 0.5}).body
    items = json.loads(body)
    expected = [detector_shape(label, *instances.mask_crop(i), score=float(instances.scores[i]))
                for i, label in enumerate(instances.labels)]
    assert items == expected  # labels of different lengths put the pixels at odd and even offsets
    for item, mask in zip(items, instances.masks, strict=True):
        np.testing.assert_array_equal(server_decode_detector_mask(item["mask"], height, width), mask)


def test_the_answer_is_the_items_joined_and_skips_empty_masks() -> None:
    instances = barrier_frame(5)
    shapes = [(label, *instances.mask_crop(i), float(instances.scores[i])) for i, label in enumerate(instances.labels)]
    empty = ("rail_top", np.zeros((3, 4), dtype=bool), (10, 10, 14, 13), 0.9)
    text = detector_response_json([shapes[0], empty, *shapes[1:]])
    assert text == "[" + ",".join(detector_shape_json(*shape[:3], score=shape[3]) for shape in shapes) + "]"
    assert detector_response_json([]) == "[]"
    assert detector_response_json([empty]) == "[]"


def test_a_crop_cut_from_a_frame_is_written_without_touching_the_frame() -> None:
    masks = np.zeros((1, 50, 80), dtype=bool)
    masks[0, 10:40, 30:33] = True  # a post
    masks[0, 20, 31] = False
    instances = Instances.from_masks(masks, np.array([0.9]), np.array([3]), NAMES)
    before = instances.masks.copy()
    crop, box = instances.mask_crop(0)
    assert not crop.flags.c_contiguous  # a view into the full-frame mask
    item = json.loads(detector_shape_json("vertical_post", crop, box))
    np.testing.assert_array_equal(np.asarray(item["mask"][:-4]).reshape(crop.shape), crop)
    np.testing.assert_array_equal(instances.masks, before)


# --- the polygon tracing's shortcuts choose what the full path would ---------------------------


def ring_with_island(island_radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:120, :120]
    r = np.hypot(yy - 60, xx - 60)
    return ((r > 50) & (r < 53)) | (r < island_radius)


def test_an_island_in_a_hole_larger_than_its_ring_is_the_polygon() -> None:
    frame = ring_with_island(45)  # the island has more pixels than the thin ring around it
    crop, box = tight_crop(frame)
    points = mask_to_polygon(crop, box, epsilon=0.0)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(frame.astype(np.uint8), connectivity=8)
    island = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    assert island[60, 60]
    np.testing.assert_array_equal(polygon_to_mask(points, 120, 120), island)


def test_a_small_island_leaves_the_ring_and_the_hole_is_filled() -> None:
    frame = ring_with_island(5)
    points = mask_to_polygon(*tight_crop(frame), epsilon=0.0)
    ring = ring_with_island(0)
    np.testing.assert_array_equal(polygon_to_mask(points, 120, 120), binary_fill_holes(ring))


def test_a_single_piece_with_a_hole_and_one_without_trace_exactly() -> None:
    frame = np.zeros((40, 70), dtype=bool)
    frame[5:30, 10:60] = True
    frame[12:20, 25:40] = False  # a hole: two boundaries, still one piece
    points = mask_to_polygon(*tight_crop(frame), epsilon=0.0)
    np.testing.assert_array_equal(polygon_to_mask(points, 40, 70), binary_fill_holes(frame))
    frame[12:20, 25:40] = True
    points = mask_to_polygon(*tight_crop(frame), epsilon=0.0)
    np.testing.assert_array_equal(polygon_to_mask(points, 40, 70), frame)


def test_simplified_polygons_keep_the_fidelity_measured_on_dense_masks() -> None:
    instances = barrier_frame(16, seed=9)
    height, width = instances.image_size
    simplified_some = False
    for index in range(len(instances)):
        crop, box = instances.mask_crop(index)
        exact = polygon_to_mask(mask_to_polygon(crop, box, epsilon=0.0), height, width)
        points = mask_to_polygon(crop, box)
        assert iou(polygon_to_mask(points, height, width), exact) >= MIN_FIDELITY
        simplified_some |= len(points) < len(mask_to_polygon(crop, box, epsilon=0.0))
    assert simplified_some
