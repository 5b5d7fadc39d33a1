"""Mask, RLE, polygon and payload encodings of barrier_annotator.cvat, checked against independent
decoders written here and against cvat_sdk's own encoder (what CVAT's server computes)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from cvat_sdk.masks import decode_mask as sdk_decode_mask
from cvat_sdk.masks import encode_mask as sdk_encode_mask
from scipy.ndimage import binary_fill_holes

from barrier_annotator.cvat import (
    decode_detector_mask,
    decode_rle,
    decode_sdk_mask,
    detector_mask_json,
    detector_shape,
    detector_shape_json,
    encode_detector_mask,
    encode_rle,
    encode_sdk_mask,
    instance_polygons,
    interactor_shape,
    mask_to_polygon,
    mask_to_polygons,
    paste_crop,
    polygon_to_mask,
    polygons_to_mask,
    sdk_instance_shapes,
    tight_crop,
)
from mask2former.structures import Instances

# --- independent references (plain Python, deliberately naive) --------------------------------


def naive_rle(crop: np.ndarray) -> list[int]:
    runs, current, length = [], False, 0
    for value in crop.ravel().tolist():
        if bool(value) == current:
            length += 1
        else:
            runs.append(length)
            current, length = bool(value), 1
    runs.append(length)
    return runs


def naive_detector_decode(values: list[int], height: int, width: int) -> np.ndarray:
    """What CVAT's server does with a detector `mask`: pixels row by row inside the inclusive box."""
    xtl, ytl, xbr, ybr = values[-4:]
    frame = np.zeros((height, width), dtype=bool)
    pixels = values[:-4]
    index = 0
    for y in range(ytl, ybr + 1):
        for x in range(xtl, xbr + 1):
            frame[y, x] = pixels[index] == 1
            index += 1
    assert index == len(pixels)
    return frame


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / np.count_nonzero(a | b))


def fill(points: list[float], height: int, width: int) -> np.ndarray:
    """Pixel-area convention, naively: pixel (x, y) is inside when its centre (x+.5, y+.5) is
    (even-odd rule). Exact for polygons with vertices on pixel corners (centres never lie on edges)."""
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    cy, cx = np.mgrid[:height, :width] + 0.5
    inside = np.zeros((height, width), dtype=bool)
    for (xa, ya), (xb, yb) in zip(xy, np.roll(xy, -1, axis=0), strict=True):
        crosses = (ya > cy) != (yb > cy)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = xa + (cy - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (cx < x_at)
    return inside


def random_frames(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    for density in (0.05, 0.5, 0.95):
        frames.append(rng.random((rng.integers(1, 30), rng.integers(1, 30))) < density)
    blob = np.zeros((40, 50), dtype=bool)
    blob[0:12, 30:50] = True  # touches top and right frame borders
    blob[20:40, 0:5] = True  # touches bottom and left borders
    frames.append(blob)
    return frames


EDGE_CROPS = {
    "single_pixel_set": np.ones((1, 1), dtype=bool),
    "single_pixel_clear": np.zeros((1, 1), dtype=bool),
    "single_row": np.array([[1, 1, 0, 1, 0, 0, 1]], dtype=bool),
    "single_column": np.array([[0], [1], [1], [0], [1]], dtype=bool),
    "full_box": np.ones((5, 7), dtype=bool),
    "first_set_last_clear": np.array([[1, 0], [0, 0]], dtype=bool),
    "checkerboard": (np.indices((6, 5)).sum(axis=0) % 2).astype(bool),
}

# --- CVAT RLE ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EDGE_CROPS))
def test_rle_edge_cases_round_trip_and_match_reference(name: str) -> None:
    crop = EDGE_CROPS[name]
    runs = encode_rle(crop)
    assert runs == naive_rle(crop)
    assert sum(runs) == crop.size
    assert (runs[0] == 0) == bool(crop.flat[0])
    assert all(type(v) is int for v in runs)
    np.testing.assert_array_equal(decode_rle(runs, crop.shape[1], crop.shape[0]), crop)


def test_rle_random_masks_round_trip() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = rng.integers(1, 40, size=2)
        crop = rng.random((h, w)) < rng.random()
        runs = encode_rle(crop)
        assert runs == naive_rle(crop)
        np.testing.assert_array_equal(decode_rle(runs, int(w), int(h)), crop)


def test_rle_known_values() -> None:
    crop = np.array([[0, 0, 1], [1, 1, 0]], dtype=bool)
    assert encode_rle(crop) == [2, 3, 1]
    assert encode_rle(~crop) == [0, 2, 3, 1]


@pytest.mark.parametrize(
    ("counts", "width", "height", "message"),
    [
        ([2, 3], 2, 3, "covers 5"),
        ([3, -1, 4], 2, 3, "non-negative"),
        ([1.5, 4.5], 2, 3, "integers"),
        (["a", "b"], 1, 1, "integers"),
        ([], 2, 2, "non-empty"),
        ([4], 0, 4, "positive"),
    ],
)
def test_rle_decoder_rejects_bad_input(counts, width, height, message) -> None:
    with pytest.raises(ValueError, match=message):
        decode_rle(counts, width, height)


def test_rle_decoder_accepts_integral_floats() -> None:
    np.testing.assert_array_equal(decode_rle([1.0, 2.0, 1.0], 2, 2), [[0, 1], [1, 0]])


# --- detector `mask` field -----------------------------------------------------------------


def test_detector_payload_decodes_pixel_exactly_from_instances() -> None:
    for frame in random_frames():
        if not frame.any():
            continue
        instances = Instances.from_masks(frame[None], np.array([0.9]), np.array([0]), ["rail_top"])
        crop, box = instances.mask_crop(0)
        values = encode_detector_mask(crop, box)
        x0, y0, x1, y1 = box
        assert len(values) == (x1 - x0) * (y1 - y0) + 4
        assert values[-4:] == [x0, y0, x1 - 1, y1 - 1]
        assert all(type(v) is int for v in values)
        assert set(values[:-4]) <= {0, 1}
        json.dumps(values)
        h, w = frame.shape
        np.testing.assert_array_equal(naive_detector_decode(values, h, w), frame)
        back, back_box = decode_detector_mask(values)
        assert back_box == box
        np.testing.assert_array_equal(back, crop)


def test_detector_payload_at_frame_borders_keeps_inclusive_box() -> None:
    frame = np.zeros((10, 12), dtype=bool)
    frame[7:10, 9:12] = True  # bottom-right corner
    crop, box = tight_crop(frame)
    assert box == (9, 7, 12, 10)
    values = encode_detector_mask(crop, box)
    assert values[-4:] == [9, 7, 11, 9]
    np.testing.assert_array_equal(naive_detector_decode(values, 10, 12), frame)


def test_detector_decoder_rejects_length_mismatch_and_non_binary() -> None:
    values = encode_detector_mask(np.ones((2, 3), dtype=bool), (4, 5, 7, 7))
    with pytest.raises(ValueError, match="pixels"):
        decode_detector_mask(values[1:])
    with pytest.raises(ValueError, match="0 or 1"):
        decode_detector_mask([2, *values[1:]])


@pytest.mark.parametrize(
    ("crop", "box"),
    [
        (np.ones((2, 2), dtype=bool), (0, 0, 3, 2)),  # shape mismatch
        (np.ones((0, 0), dtype=bool), (0, 0, 0, 0)),  # empty instance
        (np.ones((2, 2), dtype=bool), (-1, 0, 1, 2)),  # negative
        (np.ones((2, 2, 1), dtype=bool), (0, 0, 2, 2)),  # not 2-D
    ],
)
def test_encoders_refuse_crop_box_mismatch(crop, box) -> None:
    for encode in (encode_detector_mask, encode_sdk_mask, mask_to_polygon, detector_mask_json):
        with pytest.raises(ValueError):
            encode(crop, box)


# --- cvat-sdk / server RLE -----------------------------------------------------------------


def test_server_rle_of_detector_payload_equals_our_encodings() -> None:
    """cvat-integration.md §2: the server stores encode_mask(M, [xtl, ytl, xbr + 1, ybr + 1])."""
    for frame in random_frames(seed=3):
        found = tight_crop(frame)
        if found is None:
            continue
        crop, box = found
        values = encode_detector_mask(crop, box)
        h, w = frame.shape
        server_frame = naive_detector_decode(values, h, w)
        xtl, ytl, xbr, ybr = values[-4:]
        server = sdk_encode_mask(server_frame, [xtl, ytl, xbr + 1, ybr + 1])
        assert encode_sdk_mask(crop, box) == server
        assert [*encode_rle(crop), xtl, ytl, xbr, ybr] == server


@pytest.mark.parametrize("name", sorted(EDGE_CROPS))
def test_sdk_points_round_trip_through_cvat_sdk_decoder(name: str) -> None:
    crop = EDGE_CROPS[name]
    box = (3, 2, 3 + crop.shape[1], 2 + crop.shape[0])
    points = encode_sdk_mask(crop, box)
    assert all(type(v) is int for v in points)
    assert points[-4:] == [box[0], box[1], box[2] - 1, box[3] - 1]
    full = sdk_decode_mask(points, image_width=box[2] + 1, image_height=box[3] + 4)
    np.testing.assert_array_equal(full, paste_crop(crop, box, box[3] + 4, box[2] + 1))
    back, back_box = decode_sdk_mask(points)
    assert back_box == box
    np.testing.assert_array_equal(back, crop)


def test_sdk_decoder_rejects_bad_points() -> None:
    with pytest.raises(ValueError):
        decode_sdk_mask([1, 2, 3])
    with pytest.raises(ValueError, match="covers"):
        decode_sdk_mask([3, 0, 0, 1, 1])  # 2x2 box, 3 pixels of runs


def test_tight_crop_and_paste_are_inverse() -> None:
    for frame in random_frames(seed=5):
        found = tight_crop(frame)
        if found is None:
            assert not frame.any()
            continue
        crop, box = found
        np.testing.assert_array_equal(paste_crop(crop, box, *frame.shape), frame)
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    assert tight_crop(np.zeros((4, 4), dtype=bool)) is None
    with pytest.raises(ValueError, match="exceeds"):
        paste_crop(np.ones((2, 2), dtype=bool), (3, 3, 5, 5), 4, 4)


# --- polygons (pixel-area convention: vertices on pixel corners) ----------------------------


def _check_polygon(frame: np.ndarray, min_iou: float = 0.9) -> list[float]:
    crop, box = tight_crop(frame)
    points = mask_to_polygon(crop, box)
    assert points is not None
    assert len(points) % 2 == 0 and len(points) >= 6
    xy = np.asarray(points).reshape(-1, 2)
    assert len(np.unique(xy, axis=0)) >= 3
    h, w = frame.shape
    assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= w
    assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= h
    assert iou(fill(points, h, w), frame) >= min_iou
    assert iou(polygon_to_mask(points, h, w), frame) >= min_iou
    return points


def test_polygon_of_rectangles_is_exact_including_frame_borders() -> None:
    for x0, y0, x1, y1 in [(5, 6, 40, 9), (0, 0, 60, 4), (57, 0, 60, 40), (0, 37, 60, 40), (0, 0, 60, 40)]:
        frame = np.zeros((40, 60), dtype=bool)
        frame[y0:y1, x0:x1] = True
        points = _check_polygon(frame, min_iou=1.0)
        assert len(points) == 8  # a rectangle stays 4 vertices, on its pixel corners
        assert sorted(set(points[0::2])) == [x0, x1] and sorted(set(points[1::2])) == [y0, y1]


def test_exact_outlines_rasterise_back_to_the_mask_with_pycocotools() -> None:
    """Unsimplified, every component's outline gives back the mask (holes filled), pixel for pixel."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 24, size=2))
        frame = rng.random((h, w)) < rng.random()
        found = tight_crop(frame)
        if found is None:
            continue
        parts = mask_to_polygons(*found, epsilon=0.0)
        expected = binary_fill_holes(frame)
        np.testing.assert_array_equal(polygons_to_mask(parts, h, w), expected)
        union = np.zeros_like(frame)
        for part in parts:
            union |= fill(part, h, w)
        np.testing.assert_array_equal(union, expected)


def test_polygon_of_known_shapes_lies_on_pixel_corners() -> None:
    frame = np.zeros((6, 6), dtype=bool)
    frame[2, 3] = True
    assert mask_to_polygon(*tight_crop(frame)) == [3.0, 2.0, 3.0, 3.0, 4.0, 3.0, 4.0, 2.0]
    frame[2:5, 3] = True  # a 1-px wide line is a thin rectangle, not a degenerate polygon
    points = mask_to_polygon(*tight_crop(frame))
    assert sorted(set(points[0::2])) == [3, 4] and sorted(set(points[1::2])) == [2, 5]
    np.testing.assert_array_equal(polygon_to_mask(points, 6, 6), frame)


@pytest.mark.parametrize("thickness", [3, 4, 5, 6])
def test_polygon_of_rotated_thin_bars(thickness: int) -> None:
    for angle in range(0, 180, 11):
        frame = np.zeros((160, 220), dtype=np.uint8)
        corners = cv2.boxPoints(((110.3, 80.6), (180.0, float(thickness)), float(angle)))
        cv2.fillPoly(frame, [np.round(corners).astype(np.int32)], 1)
        points = _check_polygon(frame.astype(bool))
        raw = mask_to_polygon(*tight_crop(frame.astype(bool)), epsilon=0.0)
        assert len(points) <= len(raw)


def test_polygon_of_discs_is_simplified() -> None:
    yy, xx = np.mgrid[:80, :80]
    for radius in (3, 10, 30):
        frame = (xx - 40) ** 2 + (yy - 38) ** 2 <= radius**2
        points = _check_polygon(frame)
        if radius == 30:
            crop, box = tight_crop(frame)
            raw = mask_to_polygon(crop, box, epsilon=0.0)
            np.testing.assert_array_equal(polygon_to_mask(raw, 80, 80), frame)
            assert len(points) < len(raw) / 3


def test_polygon_takes_largest_component_in_frame_coordinates() -> None:
    frame = np.zeros((30, 40), dtype=bool)
    frame[2:4, 2:4] = True
    frame[10:20, 20:35] = True
    crop, box = tight_crop(frame)
    points = mask_to_polygon(crop, box)
    xy = np.asarray(points).reshape(-1, 2)
    assert (xy.min(axis=0) == [20, 10]).all() and (xy.max(axis=0) == [35, 20]).all()
    parts = mask_to_polygons(crop, box)
    assert parts[0] == points and len(parts) == 2


@pytest.mark.parametrize(
    "frame_slice",
    [
        np.s_[5, 5],  # single pixel
        np.s_[5, 2:9],  # 1-px horizontal line
        np.s_[1:9, 5],  # 1-px vertical line
        np.s_[2:9, 2:9],  # a square
    ],
)
def test_polygon_of_tiny_shapes_is_exact(frame_slice) -> None:
    frame = np.zeros((10, 10), dtype=bool)
    frame[frame_slice] = True
    points = mask_to_polygon(frame, (0, 0, 10, 10))
    np.testing.assert_array_equal(polygon_to_mask(points, 10, 10), frame)


def test_polygon_is_none_only_for_empty_masks() -> None:
    assert mask_to_polygon(np.zeros((10, 10), dtype=bool), (0, 0, 10, 10)) is None
    assert mask_to_polygons(np.zeros((3, 3), dtype=bool), (0, 0, 3, 3)) == []
    diagonal = mask_to_polygon(np.eye(8, dtype=bool), (0, 0, 8, 8))  # pixels touching at corners
    np.testing.assert_array_equal(polygon_to_mask(diagonal, 8, 8), np.eye(8, dtype=bool))
    corner = np.zeros((8, 8), dtype=bool)
    corner[1:7, 1] = True
    corner[6, 1:7] = True
    points = mask_to_polygon(corner, (0, 0, 8, 8))
    np.testing.assert_array_equal(fill(points, 8, 8), corner)


def test_collinear_vertices_are_rejected() -> None:
    from barrier_annotator.cvat.polygons import _clean

    assert _clean(np.array([[0, 0], [2, 0], [5, 0], [2, 0]])) is None
    assert _clean(np.array([[0, 0], [0, 0], [3, 0], [3, 3]])) is not None
    assert _clean(np.array([[1, 1], [1, 1], [4, 4]])) is None


def test_polygon_to_mask_is_the_pixel_area_convention_and_validates() -> None:
    square = [2, 1, 6, 1, 6, 4, 2, 4]  # pixels x 2..5, y 1..3
    expected = np.zeros((8, 8), dtype=bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(polygon_to_mask(square, 8, 8), expected)
    np.testing.assert_array_equal(polygon_to_mask(square[::-1], 8, 8), expected.T)  # (y, x) pairs
    triangle = [2, 1, 17, 4, 9, 13]
    assert iou(polygon_to_mask(triangle, 15, 20), fill(triangle, 15, 20)) >= 0.9
    two = polygons_to_mask([square, [0, 6, 2, 6, 2, 8, 0, 8]], 8, 8)
    assert two.sum() == expected.sum() + 4
    for bad in ([1, 2, 3, 4], [1, 2, 3, 4, 5], [0, 0, 1, 0, float("nan"), 1]):
        with pytest.raises(ValueError):
            polygon_to_mask(bad, 10, 10)
    with pytest.raises(ValueError):
        polygons_to_mask([], 10, 10)


# --- payload items -------------------------------------------------------------------------


def test_detector_shape_item() -> None:
    frame = np.zeros((20, 30), dtype=bool)
    frame[4:8, 2:25] = True
    crop, box = tight_crop(frame)
    item = detector_shape("rail_top", crop, box, score=np.float32(0.75), attributes={"damaged": True})
    assert item["label"] == "rail_top" and item["type"] == "mask"
    assert item["attributes"] == [{"name": "damaged", "value": "True"}]
    assert item["confidence"] == "0.75"  # a string, as CVAT's own functions send it
    decoded = json.loads(json.dumps(item))
    np.testing.assert_array_equal(naive_detector_decode(decoded["mask"], 20, 30), frame)
    assert iou(fill(decoded["points"], 20, 30), frame) == 1.0
    one_pixel = detector_shape("rail_top", np.ones((1, 1), dtype=bool), (3, 3, 4, 4))
    assert one_pixel["points"] == [3.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, 3.0]


def test_detector_shape_json_equals_the_item() -> None:
    for seed, frame in enumerate(random_frames(seed=9)):
        found = tight_crop(frame)
        if found is None:
            continue
        crop, box = found
        for score in (None, 0.123456):
            expected = detector_shape(f"label{seed}", crop, box, score=score)
            text = detector_shape_json(f"label{seed}", crop, box, score=score)
            assert json.loads(text) == expected
            assert " " not in text
        assert json.loads(detector_mask_json(crop, box)) == encode_detector_mask(crop, box)


def test_interactor_shape_item() -> None:
    crop = np.array([[1, 0, 1], [1, 1, 0]], dtype=bool)
    item = interactor_shape(crop, (5, 6, 8, 8))
    assert item["type"] == "mask" and item["attributes"] == []
    json.dumps(item)
    full = sdk_decode_mask(item["points"], image_width=10, image_height=10)
    np.testing.assert_array_equal(full, paste_crop(crop, (5, 6, 8, 8), 10, 10))


# --- the one polygon rule (issue 13, item 2) ---------------------------------------------------


def test_instance_polygons_one_per_piece_slivers_dropped_never_the_instance() -> None:
    frame = np.zeros((40, 200), dtype=bool)
    frame[5:9, 0:90] = frame[5:9, 100:200] = True  # a rail cut by a post: 360 + 400 px
    frame[20, 10] = frame[22:24, 30:32] = True  # specks of 1 and 4 px: under 16 px^2
    frame[30:34, 50:54] = True  # 16 px: at the floor, and over 1 % of the instance's 781 px: kept
    parts = instance_polygons(*tight_crop(frame))
    assert len(parts) == 3
    np.testing.assert_array_equal(polygons_to_mask(parts, 40, 200),
                                  frame & ~np.isin(np.arange(40), [20, 22, 23])[:, None])
    big = np.zeros((100, 400), dtype=bool)
    big[10:60, 0:380] = True  # 19000 px: 1 % is 190 px
    big[80:90, 0:15] = True  # 150 px: a sliver next to it
    assert len(instance_polygons(*tight_crop(big))) == 1
    dust = np.zeros((9, 9), dtype=bool)
    dust[1, 1] = dust[5, 5] = dust[7, 2] = True  # all pieces tiny: the largest stays, the instance too
    assert len(instance_polygons(*tight_crop(dust))) == 1
    assert instance_polygons(np.zeros((3, 3), dtype=bool), (0, 0, 3, 3)) == []


def test_sdk_instance_shapes_group_the_pieces_of_one_instance() -> None:
    frame = np.zeros((20, 50), dtype=bool)
    frame[2:6, 0:20] = frame[2:6, 25:50] = True
    crop, box = tight_crop(frame)
    shapes = sdk_instance_shapes(3, crop, box, as_polygons=True, group=41)
    assert [(s.type.value, s.label_id, s.group) for s in shapes] == [("polygon", 3, 41)] * 2
    with pytest.raises(ValueError, match="group"):
        sdk_instance_shapes(3, crop, box, as_polygons=True)
    single = sdk_instance_shapes(3, frame[:, :20], (0, 0, 20, 20), as_polygons=True, group=41)
    assert len(single) == 1 and getattr(single[0], "group", None) is None
    (mask,) = sdk_instance_shapes(3, crop, box)
    np.testing.assert_array_equal(paste_crop(*decode_sdk_mask(mask.points), 20, 50), frame)
    assert sdk_instance_shapes(3, np.zeros((2, 2), dtype=bool), (0, 0, 2, 2)) == []
