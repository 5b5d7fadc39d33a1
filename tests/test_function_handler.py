"""The CVAT detector function end to end: functions/mask2former-barrier/main.py driven with real
nuclio_sdk Event/Context objects, every returned ``mask`` and ``points`` decoded and compared with
the predictor's masks; the bad-input corpus; the worker keeps serving after each refusal."""

from __future__ import annotations

import base64
import io
import json
import logging
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_fill_holes

from barrier_annotator.cvat import polygon_to_mask
from barrier_annotator.serving import ModelHandler
from barrier_annotator.tools.serve_function import LocalFunction, make_event
from mask2former.config.class_names import BARRIER_CLASSES
from mask2former.predictor import Predictor
from tests.conftest import TINY_CONFIG
from tests.serving_fakes import (  # noqa: F401 (detector_function is a fixture)
    FakePredictor,
    body,
    detector_function,
    encode_frame,
    iou,
    server_decode_detector_mask,
    synthetic_instances,
)

FRAME = (np.random.default_rng(7).random((72, 96, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def function(detector_function) -> LocalFunction:  # noqa: F811 (the shared session fixture)
    return detector_function


def call(function: LocalFunction, payload: object, content_type: str = "application/json"):
    """A Nuclio event as the HTTP trigger makes it: JSON decoded into a dict, anything else bytes."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = function(make_event(raw, content_type, {"Content-Type": content_type}))
    return response.status_code, response.content_type, json.loads(response.body)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """What CVAT's one polygon per shape can represent: the largest part, holes filled."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return binary_fill_holes(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))


def check_items(items: list, masks: np.ndarray, labels: list[str], scores: np.ndarray) -> None:
    """Every item against the instance it came from, in order: pixel-exact mask, faithful polygon."""
    height, width = masks.shape[1:]
    assert len(items) == len(masks)
    for item, mask, label, score in zip(items, masks, labels, scores, strict=True):
        assert item["label"] == label and item["type"] == "mask"
        assert item["confidence"] == str(round(float(score), 4))
        np.testing.assert_array_equal(server_decode_detector_mask(item["mask"], height, width), mask)
        points = item["points"]
        assert len(points) >= 6 and len(points) % 2 == 0
        xy = np.asarray(points).reshape(-1, 2)
        assert xy.min() >= 0 and xy[:, 0].max() <= width and xy[:, 1].max() <= height
        assert iou(polygon_to_mask(points, height, width), largest_component(mask)) >= 0.9


# --- the real function with the tiny model ---------------------------------------------------


def test_main_handler_returns_the_predictors_masks_exactly(function: LocalFunction) -> None:
    status, content_type, items = call(function, body(FRAME, threshold=0.0))
    assert status == 200 and content_type == "application/json"
    predictor = function.context.user_data.model_handler.predictor
    instances = predictor(FRAME, score_threshold=0.0)
    assert len(instances) > 0, "a random tiny model yields instances at threshold 0"
    check_items(items, instances.masks, instances.labels, instances.scores)
    assert {item["label"] for item in items} <= set(BARRIER_CLASSES)


def test_threshold_filters_and_defaults_to_the_models(function: LocalFunction) -> None:
    predictor = function.context.user_data.model_handler.predictor
    scores = predictor(FRAME, score_threshold=0.0).scores
    cut = float(np.median(scores))
    _, _, items = call(function, body(FRAME, threshold=cut))
    assert len(items) == int((scores >= cut).sum())
    assert all(float(item["confidence"]) >= round(cut, 4) for item in items)
    _, _, default = call(function, body(FRAME))  # no threshold: DEPLOY.SCORE_THRESHOLD = 0.5
    assert len(default) == int((scores >= 0.5).sum())
    status, _, empty = call(function, body(FRAME, threshold=1.0))
    assert status == 200 and empty == []  # nothing found is an empty list, never an error


def test_body_as_bytes_and_as_text_is_accepted(function: LocalFunction) -> None:
    payload = json.dumps(body(FRAME, threshold=0.2)).encode()
    as_dict = call(function, json.loads(payload))
    assert call(function, payload, content_type="application/x-www-form-urlencoded") == as_dict
    assert call(function, payload, content_type="text/plain") == as_dict


# --- known masks through an injected predictor -------------------------------------------------


def test_synthetic_barrier_masks_round_trip_through_the_payload() -> None:
    image, instances = synthetic_instances(seed=4)
    handler = ModelHandler(FakePredictor(instances))
    reply = handler.handle(body(image, threshold=0.0))
    assert reply.status == 200
    check_items(json.loads(reply.body), instances.masks, instances.labels, instances.scores)
    for seed in (0, 2):
        image, instances = synthetic_instances(seed=seed, height=240, width=320)
        items = json.loads(ModelHandler(FakePredictor(instances)).handle(body(image, threshold=0.0)).body)
        check_items(items, instances.masks, instances.labels, instances.scores)
        solid = [i for i, m in enumerate(instances.masks) if cv2.connectedComponents(m.astype(np.uint8))[0] == 2]
        assert solid, "the scene has unoccluded parts"
        for index in solid:  # a solid part's polygon covers the part itself
            assert iou(polygon_to_mask(items[index]["points"], 240, 320), instances.masks[index]) >= 0.9


def test_default_threshold_is_half_and_passed_to_the_model() -> None:
    image, instances = synthetic_instances()
    fake = FakePredictor(instances)
    items = json.loads(ModelHandler(fake).handle(body(image)).body)
    assert fake.calls[-1][1] == 0.5
    assert len(items) == int((instances.scores >= 0.5).sum())
    ModelHandler(fake).handle(body(image, threshold=0))
    assert fake.calls[-1][1] == 0.0


# --- bad input: 4xx with a JSON error, logged, and the worker goes on ---------------------------


def png_with_header_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width x height``: a decompression bomb's calling card."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def jpeg_bytes(image: np.ndarray) -> bytes:
    return base64.b64decode(encode_frame(image, "JPEG", quality=90))


BAD_REQUESTS = {
    "not_json": (b"this is not json", 400),
    "empty_body": (b"", 400),
    "json_list": (b"[1, 2, 3]", 400),
    "json_string": (b'"image"', 400),
    "not_utf8": (b"\xff\xfe{", 400),
    "missing_image": ({"threshold": 0.5}, 400),
    "image_not_string": ({"image": 12345}, 400),
    "image_list": ({"image": ["abc"]}, 400),
    "invalid_base64": ({"image": "this is *not* base64!"}, 400),
    "empty_image": ({"image": ""}, 400),
    "not_an_image": ({"image": base64.b64encode(b"hello, I am a text file").decode()}, 422),
    "truncated_jpeg": ({"image": base64.b64encode(jpeg_bytes(FRAME)[:400]).decode()}, 422),
    "above_pixel_limit": ({"image": encode_frame(np.zeros((1100, 1000, 3), np.uint8))}, 413),
    "decompression_bomb": ({"image": base64.b64encode(png_with_header_size(60000, 60000)).decode()}, 413),
    "threshold_string": ({"image": encode_frame(FRAME), "threshold": "0.5"}, 400),
    "threshold_bool": ({"image": encode_frame(FRAME), "threshold": True}, 400),
    "threshold_above_one": ({"image": encode_frame(FRAME), "threshold": 1.5}, 400),
    "threshold_negative": ({"image": encode_frame(FRAME), "threshold": -0.1}, 400),
    "threshold_nan": (b'{"image": "' + encode_frame(FRAME).encode() + b'", "threshold": NaN}', 400),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_input_is_refused_with_a_json_error(function, name, caplog) -> None:
    payload, expected = BAD_REQUESTS[name]
    with caplog.at_level(logging.WARNING, logger="mask2former"):
        status, content_type, answer = call(function, payload)
    assert (status, content_type) == (expected, "application/json")
    assert set(answer) == {"error"} and answer["error"]
    assert any("refused" in record.getMessage() for record in caplog.records), "refusals are logged"


def test_the_worker_still_serves_after_the_whole_bad_input_corpus(function) -> None:
    for payload, expected in BAD_REQUESTS.values():
        assert call(function, payload)[0] == expected
    status, _, items = call(function, body(FRAME, threshold=0.0))
    assert status == 200 and len(items) > 0


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("grayscale", np.full((40, 50), 128, np.uint8)),
        ("rgba", np.dstack([FRAME, np.full(FRAME.shape[:2], 120, np.uint8)])),
        ("sixteen_bit", (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30)),
        ("one_pixel", np.full((1, 1, 3), 200, np.uint8)),
    ],
)
def test_unusual_but_valid_frames_are_answered(function, name, image) -> None:
    status, _, items = call(function, body(image, threshold=0.0))
    assert status == 200 and isinstance(items, list)
    height, width = image.shape[:2]
    for item in items:  # whatever the random model finds, it is in this frame's coordinates
        assert server_decode_detector_mask(item["mask"], height, width).any()


def test_an_unexpected_error_is_a_500_with_traceback_and_the_worker_goes_on(caplog) -> None:
    image, instances = synthetic_instances()
    fake = FakePredictor(instances, error=RuntimeError("CUDA out of memory (simulated)"))
    handler = ModelHandler(fake)
    with caplog.at_level(logging.ERROR, logger="mask2former"):
        reply = handler.handle(body(image))
    assert reply.status == 500 and "CUDA out of memory" in json.loads(reply.body)["error"]
    assert any(record.exc_info for record in caplog.records), "traceback logged"
    fake.error = None
    assert handler.handle(body(image)).status == 200


def test_unknown_kind_is_an_internal_error_not_a_crash() -> None:
    image, instances = synthetic_instances()
    assert ModelHandler(FakePredictor(instances)).handle(body(image), kind="tracker").status == 500


def test_handler_errors_reach_the_nuclio_logger(function, caplog) -> None:
    """The package's log records are forwarded to context.logger (Nuclio's log channel)."""
    with caplog.at_level(logging.WARNING):
        call(function, {"image": 1})
    assert any(record.name == "barrier-serve.function" and "refused" in record.getMessage()
               for record in caplog.records)


def test_handler_from_files_builds_the_predictor(tmp_path) -> None:
    handler = ModelHandler.from_files(TINY_CONFIG, None, backend="torch")
    assert isinstance(handler.predictor, Predictor)
    assert handler.class_names == BARRIER_CLASSES and handler.default_threshold == 0.5
