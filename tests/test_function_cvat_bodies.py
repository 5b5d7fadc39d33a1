"""The request bodies CVAT 2.73's lambda manager really sends, through the Nuclio glue
(``barrier_annotator.serving.nuclio``) with a real ``nuclio_sdk`` Context and Logger wired as Nuclio's
Python wrapper wires them (a JSON log stream), and what an administrator finds in that log when a
request is refused: CVAT itself shows only "400 Client Error".
"""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace

import nuclio_sdk
import nuclio_sdk.logger
import numpy as np
import pytest
from cvat_sdk.masks import decode_mask

from barrier_annotator.serving import ModelHandler
from barrier_annotator.serving.nuclio import init_worker, respond
from mask2former.structures import Instances
from tests.serving_fakes import FakePredictor, encode_frame, server_decode_detector_mask

NAMES = ("rail_top", "rail_mid", "toeboard", "vertical_post")
HEIGHT, WIDTH = 240, 320
FRAME = (np.random.default_rng(11).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)
CLICK = [[150.5, 157.5]]  # as CVAT sends it: canvas floats


def scene() -> Instances:
    """A rail through the click, a post crossing it, a toeboard below; scores 0.9 / 0.8 / 0.6."""
    masks = np.zeros((3, HEIGHT, WIDTH), dtype=bool)
    masks[0, 155:161, 20:300] = True  # rail_top: pixel (150, 157) is on it
    masks[1, 60:230, 200:211] = True  # vertical_post
    masks[2, 200:215, 20:300] = True  # toeboard
    return Instances.from_masks(masks, np.array([0.9, 0.8, 0.6]), np.array([0, 3, 2]), NAMES)


class NuclioWorker:
    """``init_context`` / ``handler`` of a worker, with the context Nuclio's Python wrapper builds:
    a ``nuclio_sdk.Logger`` writing JSON records to the processor's stream (here a buffer)."""

    def __init__(self, kind: str, predictor: FakePredictor) -> None:
        self.stream = io.StringIO()
        logger = nuclio_sdk.Logger(logging.DEBUG, name=f"nuclio-test-{kind}")
        logger.set_handler("default", self.stream, nuclio_sdk.logger.JSONFormatter())
        self.context = nuclio_sdk.Context(logger, nuclio_sdk.Platform("local", namespace="nuclio"), 0,
                                          nuclio_sdk.TriggerInfo("http", "myHttpTrigger"))
        self.context.user_data = SimpleNamespace()
        self.predictor = predictor
        init_worker(self.context, lambda: ModelHandler(predictor), kind)

    def __call__(self, payload: dict) -> tuple[int, object]:
        event = nuclio_sdk.Event(body=payload, content_type="application/json", method="POST", path="/",
                                 trigger=nuclio_sdk.TriggerInfo("http", "myHttpTrigger"))
        response = respond(self.context, event)
        return response.status_code, json.loads(response.body)

    def log(self) -> list[dict]:
        """The records the processor would receive (and print in ``docker logs``)."""
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]


@pytest.fixture
def interactor() -> NuclioWorker:
    return NuclioWorker("interactor", FakePredictor(scene()))


@pytest.fixture
def detector() -> NuclioWorker:
    return NuclioWorker("detector", FakePredictor(scene()))


# --- interactor: every way CVAT says "no box" ---------------------------------------------------


def interactor_body(**fields: object) -> dict:
    return {"image": encode_frame(FRAME), "pos_points": CLICK, "neg_points": [], **fields}


@pytest.mark.parametrize(
    "payload",
    [
        interactor_body(obj_bbox=[]),  # CVAT 2.73's UI: a click, no box drawn
        interactor_body(obj_bbox=None),
        interactor_body(),  # obj_bbox omitted
        interactor_body(obj_bbox=[], text_prompts=[]),
        interactor_body(obj_bbox=None, text_prompts=["guard rail"], some_future_field={"x": 1}),
    ],
    ids=["empty_list", "null", "omitted", "text_prompts_empty", "text_prompts_and_unknown_key"],
)
def test_click_without_a_box_returns_the_clicked_instance(interactor: NuclioWorker, payload: dict) -> None:
    status, answer = interactor(payload)
    assert status == 200, answer
    (shape,) = answer["shapes"]
    chosen = decode_mask(shape["points"], image_width=WIDTH, image_height=HEIGHT)
    np.testing.assert_array_equal(chosen, scene().masks[0])


def test_click_with_a_box_keeps_only_instances_in_the_box(interactor: NuclioWorker) -> None:
    # the click lies on rail and post alike; the box holds the post, not the rail
    status, answer = interactor(interactor_body(pos_points=[[205.5, 157.5]],
                                                obj_bbox=[[190.0, 50.0], [220.0, 240.0]]))
    assert status == 200
    (shape,) = answer["shapes"]
    np.testing.assert_array_equal(decode_mask(shape["points"], image_width=WIDTH, image_height=HEIGHT),
                                  scene().masks[1])
    status, answer = interactor(interactor_body(pos_points=[[205.5, 157.5]], obj_bbox=[]))
    assert status == 200  # without the box the higher-scoring rail wins the shared pixel
    np.testing.assert_array_equal(decode_mask(answer["shapes"][0]["points"], image_width=WIDTH,
                                              image_height=HEIGHT), scene().masks[0])


@pytest.mark.parametrize("box", [[[1.0, 2.0]], [[1.0, 2.0], [3.0]], [[1, 2], [3, "4"]], "box", [1, 2, 3]])
def test_a_malformed_non_empty_box_is_still_refused_and_logged(interactor: NuclioWorker, box: object) -> None:
    status, answer = interactor(interactor_body(obj_bbox=box))
    assert status == 400 and "obj_bbox" in answer["error"]
    assert interactor.predictor.calls == [], "refused before the model runs"
    warnings = [r for r in interactor.log() if r["level"] == "warning"]
    assert any("refused" in r["message"] and "obj_bbox" in r["message"] for r in warnings), interactor.log()


def test_no_click_and_an_empty_box_is_refused(interactor: NuclioWorker) -> None:
    status, answer = interactor(interactor_body(pos_points=[], obj_bbox=[]))
    assert status == 400 and "positive point" in answer["error"]


# --- detector: with and without threshold ----------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected_threshold", "kept"),
    [
        ({}, 0.5, 3),  # CVAT leaves threshold out when the user set none (or 0)
        ({"threshold": 0.7}, 0.7, 2),
        ({"threshold": 0.85, "unknown_field": [1, 2]}, 0.85, 1),
    ],
)
def test_detector_bodies(detector: NuclioWorker, payload: dict, expected_threshold: float, kept: int) -> None:
    status, items = detector({"image": encode_frame(FRAME), **payload})
    assert status == 200
    assert detector.predictor.calls[-1][1] == expected_threshold
    assert [item["label"] for item in items] == ["rail_top", "vertical_post", "toeboard"][:kept]
    for item, mask in zip(items, scene().masks, strict=False):
        np.testing.assert_array_equal(server_decode_detector_mask(item["mask"], HEIGHT, WIDTH), mask)


# --- refusals reach the function's log (where the reason is: CVAT shows "400 Client Error") ------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"threshold": 0.5}, "missing 'image'"),
        ({"image": "not base64 at all!"}, "not valid base64"),
        ({"image": encode_frame(FRAME), "threshold": "high"}, "threshold"),
    ],
)
def test_a_refused_detector_request_logs_its_reason_at_warning(detector: NuclioWorker, payload: dict,
                                                               reason: str) -> None:
    status, answer = detector(payload)
    assert status == 400 and reason in answer["error"]
    (record,) = [r for r in detector.log() if r["level"] == "warning"]
    assert "detector request refused (400)" in record["message"] and reason in record["message"]


def test_a_refusal_log_names_the_fields_cvat_sent_but_not_the_image(interactor: NuclioWorker) -> None:
    payload = interactor_body(obj_bbox=[[1.0, 2.0]], text_prompts=[])
    interactor(payload)
    (record,) = [r for r in interactor.log() if r["level"] == "warning"]
    message = record["message"]
    for key in ("image", "pos_points", "neg_points", "obj_bbox", "text_prompts"):
        assert key in message
    assert payload["image"][:40] not in message, "no frame bytes in the log"


def test_a_huge_malformed_field_gives_a_short_error_and_log_line(interactor: NuclioWorker) -> None:
    status, answer = interactor(interactor_body(obj_bbox=[[float(i), float(i)] for i in range(50_000)]))
    assert status == 400 and len(answer["error"]) < 400
    (record,) = [r for r in interactor.log() if r["level"] == "warning"]
    assert len(record["message"]) < 800
