"""The interactor: the scoring rule that picks an instance from clicks and a box, its response
(``{"shapes": [CVAT RLE + box]}``, decoded with cvat-sdk's own decoder) and its refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cvat_sdk.masks import decode_mask

from barrier_annotator.serving import ModelHandler, Prompt, choose_instance
from barrier_annotator.tools.serve_function import LocalFunction
from mask2former.structures import Instances
from tests.serving_fakes import FakePredictor, body, function_env, synthetic_instances
from tests.test_function_handler import call

NAMES = ("rail_top", "rail_mid", "toeboard", "vertical_post")


def scene() -> Instances:
    """Three instances on a 40x60 frame: a 3-px rail, a post crossing it, a low-score toeboard."""
    masks = np.zeros((3, 40, 60), dtype=bool)
    masks[0, 10:13, 5:55] = True  # rail_top, rows 10..12
    masks[1, 5:35, 30:34] = True  # vertical_post, overlaps the rail
    masks[2, 30:36, 5:55] = True  # toeboard
    return Instances.from_masks(masks, np.array([0.9, 0.8, 0.3]), np.array([0, 3, 2]), NAMES)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (Prompt(positive=[(10.5, 11.5)]), 0),  # on the rail
        (Prompt(positive=[(10.5, 14.9)]), 0),  # 2 px below the 3-px rail: within the click radius
        (Prompt(positive=[(10.5, 16.5)]), None),  # too far from anything
        (Prompt(positive=[(31.5, 11.5)]), 0),  # where rail and post overlap: higher score wins the tie
        (Prompt(positive=[(31.5, 11.5)], negative=[(10.5, 11.5)]), 1),  # negative click on the rail
        (Prompt(positive=[(31.5, 11.5), (31.5, 25.5)]), 1),  # two hits on the post beat one on the rail
        (Prompt(positive=[(31.5, 11.5)], box=(28.0, 4.0, 36.0, 36.0)), 1),  # the rail is not in the box
        (Prompt(positive=[(20.5, 32.5)]), 2),  # the toeboard, low score but the only one clicked
        (Prompt(box=(3.0, 28.0, 57.0, 37.0)), 2),  # box only: the instance that fills it
        (Prompt(positive=[(20.5, 32.5)], negative=[(40.2, 33.0)]), None),  # clicked and excluded
    ],
)
def test_scoring_rule(prompt: Prompt, expected: int | None) -> None:
    assert choose_instance(scene(), prompt) == expected


def test_exact_hits_break_ties_between_radius_hits() -> None:
    masks = np.zeros((2, 20, 20), dtype=bool)
    masks[0, 5:8, 2:18] = True
    masks[1, 9:12, 2:18] = True
    instances = Instances.from_masks(masks, np.array([0.9, 0.2]), np.array([0, 1]), NAMES)
    assert choose_instance(instances, Prompt(positive=[(5.5, 10.5)])) == 1  # on row 10: inside instance 1


def test_clicks_outside_the_frame_are_clamped() -> None:
    assert choose_instance(scene(), Prompt(positive=[(-3.0, 11.0)], negative=[(999.0, 999.0)])) is None
    assert choose_instance(scene(), Prompt(positive=[(5.0, 11.2)])) == 0


def test_interactor_response_decodes_to_the_chosen_mask() -> None:
    image, instances = synthetic_instances(seed=4)
    target = int(np.argmax([m.sum() for m in instances.masks]))
    ys, xs = np.nonzero(instances.masks[target])
    inside = instances.masks[target].copy()
    for other in range(len(instances)):
        if other != target:
            inside &= ~instances.masks[other]
    cy, cx = (int(v[len(v) // 2]) for v in np.nonzero(inside))
    handler = ModelHandler(FakePredictor(instances))
    reply = handler.handle(body(image, pos_points=[[cx + 0.5, cy + 0.5]], neg_points=[], obj_bbox=None, threshold=0),
                           kind="interactor")
    assert reply.status == 200
    (shape,) = json.loads(reply.body)["shapes"]
    assert shape["type"] == "mask" and shape["attributes"] == []
    height, width = instances.image_size
    np.testing.assert_array_equal(decode_mask(shape["points"], image_width=width, image_height=height),
                                  instances.masks[target])
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == tuple(shape["points"][-4:])


def test_interactor_uses_its_own_lower_default_threshold() -> None:
    image, instances = synthetic_instances(seed=4)
    fake = FakePredictor(instances)
    ModelHandler(fake).handle(body(image, pos_points=[[1, 1]], neg_points=[]), kind="interactor")
    assert fake.calls[-1][1] == 0.1
    ModelHandler(fake).handle(body(image, pos_points=[[1, 1]], neg_points=[], threshold=0.7), kind="interactor")
    assert fake.calls[-1][1] == 0.7


def test_nothing_agrees_gives_empty_shapes() -> None:
    image, instances = synthetic_instances(seed=4)
    handler = ModelHandler(FakePredictor(instances.select(np.array([], dtype=int))))
    reply = handler.handle(body(image, pos_points=[[5, 5]], neg_points=[]), kind="interactor")
    assert (reply.status, json.loads(reply.body)) == (200, {"shapes": []})


@pytest.mark.parametrize(
    "fields",
    [
        {"pos_points": [], "neg_points": []},  # nothing to go by
        {"neg_points": [[1, 2]]},
        {"pos_points": "here"},
        {"pos_points": [[1, 2, 3]]},
        {"pos_points": [["a", 2]]},
        {"pos_points": [[1, 2]], "neg_points": [[True, 2]]},
        {"pos_points": [[1, 2]], "obj_bbox": [[1, 2]]},
        {"pos_points": [[1, 2]], "obj_bbox": "box"},
    ],
)
def test_malformed_prompts_are_400(fields: dict) -> None:
    image, instances = synthetic_instances(seed=4)
    fake = FakePredictor(instances)
    reply = ModelHandler(fake).handle(body(image, **fields), kind="interactor")
    assert reply.status == 400 and "error" in json.loads(reply.body)
    assert fake.calls == [], "refused before running the model"


def test_flat_and_reversed_boxes_are_normalised() -> None:
    from barrier_annotator.serving.requests import parse_box

    assert parse_box({"obj_bbox": [[10, 20], [2, 4]]}) == (2.0, 4.0, 10.0, 20.0)
    assert parse_box({"obj_bbox": [2, 4, 10, 20]}) == (2.0, 4.0, 10.0, 20.0)
    assert parse_box({}) is None
    assert parse_box({"obj_bbox": None}) is None
    assert parse_box({"obj_bbox": []}) is None  # CVAT 2.73's UI: a click without a box


def test_main_py_serves_the_interactor(tmp_path) -> None:
    function = LocalFunction(env=function_env(tmp_path, kind="interactor"))
    frame = (np.random.default_rng(1).random((48, 64, 3)) * 255).astype(np.uint8)
    instances = function.context.user_data.model_handler.predict(frame, 0.0)
    ys, xs = np.nonzero(instances.masks[0])
    # the body CVAT 2.73 sends for a click with no box drawn
    status, _, answer = call(function, body(frame, pos_points=[[xs[0] + 0.5, ys[0] + 0.5]], neg_points=[],
                                            obj_bbox=[], threshold=0.0))
    assert status == 200 and len(answer["shapes"]) == 1
    chosen = decode_mask(answer["shapes"][0]["points"], image_width=64, image_height=48)
    assert chosen[ys[0], xs[0]] and any((chosen == m).all() for m in instances.masks)
