"""The native cvat-sdk function (tools/cvat_function.py): its spec, its shapes decoded back to the
predictor's masks in mask and polygon modes, and cvat-sdk's own validation of both."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
from cvat_sdk.auto_annotation import BadFunctionError
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl
from cvat_sdk.masks import decode_mask

from barrier_annotator.cvat import instance_polygons, polygons_to_mask
from barrier_annotator.serving import ModelHandler
from barrier_annotator.tools.cvat_function import BarrierFunction, create, parse_shape_types
from mask2former.config.class_names import BARRIER_CLASSES
from mask2former.predictor import Predictor
from tests.conftest import TINY_CONFIG
from tests.serving_fakes import FakePredictor, iou, synthetic_instances


def context(conf_threshold: float | None = 0.0, conv_mask_to_poly: bool = False) -> _DetectionFunctionContextImpl:
    """The SDK's own context class, as ``annotate_task`` / cvat-cli build it."""
    return _DetectionFunctionContextImpl(frame_name="frame_000000.jpg", conf_threshold=conf_threshold,
                                         conv_mask_to_poly=conv_mask_to_poly)


def sdk_validate(function: BarrierFunction, shapes: list, conv_mask_to_poly: bool, task_label_type: str = "mask"):
    """cvat-sdk's check of a function's output against a task's labels (what annotate_task runs)."""
    task_labels = [SimpleNamespace(name=name, id=100 + i, type=task_label_type, attributes=[], sublabels=[])
                   for i, name in enumerate(BARRIER_CLASSES)]
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task_labels,
                               allow_unmatched_labels=False, conv_mask_to_poly=conv_mask_to_poly)
    return mapper.validate_and_remap(copy.deepcopy(shapes), 7)  # it stamps source/frame into the shapes


@pytest.fixture(scope="module")
def tiny_function(tiny_cfg, tiny_model) -> BarrierFunction:
    cfg = tiny_cfg.clone()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 192
    return BarrierFunction(ModelHandler(Predictor(cfg, model=tiny_model, backend="torch")))


FRAME = (np.random.default_rng(5).random((48, 64, 3)) * 255).astype(np.uint8)


def test_spec_lists_the_four_mask_labels_in_model_order(tiny_function) -> None:
    labels = tiny_function.spec.labels
    assert [(label.name, label.id, label.type) for label in labels] == [
        (name, index, "mask") for index, name in enumerate(BARRIER_CLASSES)]


def test_mask_shapes_decode_to_the_predictors_masks(tiny_function) -> None:
    shapes = tiny_function.detect(context(0.0), PIL.Image.fromarray(FRAME))
    instances = tiny_function.handler.predictor(FRAME, score_threshold=0.0)
    assert len(shapes) == len(instances) > 0
    for shape, mask, class_id in zip(shapes, instances.masks, instances.class_ids, strict=True):
        assert shape.type.value == "mask" and shape.label_id == class_id and shape.frame == 0
        np.testing.assert_array_equal(decode_mask(shape.points, image_width=64, image_height=48), mask)
    tags, remapped = sdk_validate(tiny_function, shapes, conv_mask_to_poly=False)
    assert tags == [] and len(remapped) == len(shapes)
    assert {s.label_id for s in remapped} <= {100, 101, 102, 103} and {s.frame for s in remapped} == {7}


def objects(shapes: list, height: int, width: int) -> list[tuple[int, np.ndarray]]:
    """(label id, union mask) per object: polygons sharing a group are one, as CVAT reads them."""
    found: dict = {}
    for index, shape in enumerate(shapes):
        key = (shape.label_id, getattr(shape, "group", None) or -1 - index)
        found.setdefault(key, []).append(shape.points)
    return [(key[0], polygons_to_mask(parts, height, width)) for key, parts in found.items()]


def test_polygon_mode_when_cvat_asks_to_convert(tiny_function) -> None:
    shapes = tiny_function.detect(context(0.0, conv_mask_to_poly=True), PIL.Image.fromarray(FRAME))
    instances = tiny_function.handler.predictor(FRAME, score_threshold=0.0)
    assert {s.type.value for s in shapes} == {"polygon"}
    found = objects(shapes, 48, 64)
    assert [label for label, _ in found] == instances.class_ids.tolist()  # one object per instance
    for (_, mask), expected in zip(found, instances.masks, strict=True):  # noise masks: >= 0.918 seen
        assert iou(mask, expected) >= 0.9
    for task_label_type in ("polygon", "any"):  # the SDK refuses converted masks on mask-only labels
        assert len(sdk_validate(tiny_function, shapes, True, task_label_type)[1]) == len(shapes)
    masks = tiny_function.detect(context(0.0), PIL.Image.fromarray(FRAME))
    with pytest.raises(BadFunctionError, match=r"type 'mask'|conv_mask_to_poly"):  # the SDK refuses masks here
        sdk_validate(tiny_function, masks, True, "any")


def test_polygons_of_known_barrier_parts_follow_the_one_polygon_rule() -> None:
    """The same rule as barrier-label: one polygon per piece (slivers dropped), the pieces of one
    instance in one group, each instance its own group; >= 0.93 IoU with the predicted mask here,
    where the largest piece alone (the old single polygon) kept as little as 0.38."""
    image, instances = synthetic_instances(seed=4, height=240, width=320)
    function = BarrierFunction(ModelHandler(FakePredictor(instances)), group_base=77)
    shapes = function.detect(context(0.0, conv_mask_to_poly=True), PIL.Image.fromarray(image))
    found = objects(shapes, 240, 320)
    assert [label for label, _ in found] == instances.class_ids.tolist()
    for (_, mask), expected in zip(found, instances.masks, strict=True):
        assert iou(mask, expected) >= 0.93
    for shape, (points, group) in zip(shapes, _rule(instances), strict=True):
        assert shape.points == points and getattr(shape, "group", None) == group
    masks = function.detect(context(0.0), PIL.Image.fromarray(image))
    for shape, mask in zip(masks, instances.masks, strict=True):
        np.testing.assert_array_equal(decode_mask(shape.points, image_width=320, image_height=240), mask)
    sdk_validate(function, masks, conv_mask_to_poly=False, task_label_type="any")


def _rule(instances) -> list[tuple[list[float], int | None]]:
    """instance_polygons per instance, groups counted from 77 over multi-piece instances only."""
    expected, group = [], 77
    for index in range(len(instances)):
        parts = instance_polygons(*instances.mask_crop(index))
        expected += [(points, group if len(parts) > 1 else None) for points in parts]
        group += len(parts) > 1
    assert group > 78  # the scene has instances in several pieces
    return expected


def _task(types: dict[str, str]) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=name, id=100 + i, type=types[name], attributes=[], sublabels=[])
            for i, name in enumerate(BARRIER_CLASSES)]


# (``-p shape`` value, --conv-mask-to-poly) -> {task label type: shape type written, or None: refused}
LABEL_TYPE_TABLE = {
    ("mask", False): {"mask": "mask", "polygon": None, "any": "mask"},
    ("mask", True): {"mask": None, "polygon": "polygon", "any": "polygon"},
    ("polygon", False): {"mask": None, "polygon": "polygon", "any": "polygon"},
    ("polygon", True): {"mask": None, "polygon": "polygon", "any": "polygon"},
}


@pytest.mark.parametrize(("shape", "conv"), sorted(LABEL_TYPE_TABLE))
def test_label_type_combinations_through_the_sdk_driver(shape: str, conv: bool) -> None:
    """The README's table, checked with cvat-sdk's own mapper (what annotate_task runs)."""
    image, instances = synthetic_instances(seed=4, height=120, width=160)
    function = BarrierFunction(ModelHandler(FakePredictor(instances)), parse_shape_types(shape, BARRIER_CLASSES))
    for task_type, written in LABEL_TYPE_TABLE[(shape, conv)].items():
        task = _task(dict.fromkeys(BARRIER_CLASSES, task_type))
        if written is None:
            with pytest.raises(BadFunctionError, match="in the function, but"):  # before any frame is read
                _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task,
                                  allow_unmatched_labels=False, conv_mask_to_poly=conv)
            continue
        mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task,
                                   allow_unmatched_labels=False, conv_mask_to_poly=conv)
        shapes = function.detect(context(0.0, conv_mask_to_poly=conv), PIL.Image.fromarray(image))
        _, remapped = mapper.validate_and_remap(shapes, 3)
        assert remapped and {s.type.value for s in remapped} == {written}


def test_a_task_mixing_mask_and_polygon_labels() -> None:
    """No single spec type fits such a task; ``-p shape=str:polygon,rail_top=mask`` does."""
    image, instances = synthetic_instances(seed=4, height=120, width=160)
    types = parse_shape_types("polygon,rail_top=mask", BARRIER_CLASSES)
    assert types == {"rail_top": "mask", "rail_mid": "polygon", "toeboard": "polygon", "vertical_post": "polygon"}
    function = BarrierFunction(ModelHandler(FakePredictor(instances)), types)
    task = _task({**dict.fromkeys(BARRIER_CLASSES, "polygon"), "rail_top": "mask"})
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels, task,
                               allow_unmatched_labels=False, conv_mask_to_poly=False)
    _, remapped = mapper.validate_and_remap(function.detect(context(0.0), PIL.Image.fromarray(image)), 0)
    kinds = {(s.label_id, s.type.value) for s in remapped}
    assert kinds and all(kind == ("mask" if label == 100 else "polygon") for label, kind in kinds)
    assert parse_shape_types("", BARRIER_CLASSES) == dict.fromkeys(BARRIER_CLASSES, "mask")
    assert parse_shape_types("toeboard=polygon", BARRIER_CLASSES)["toeboard"] == "polygon"
    for bad in ("box", "rail=polygon", "toeboard=rectangle"):
        with pytest.raises(ValueError, match="shape"):
            parse_shape_types(bad, BARRIER_CLASSES)


def test_conf_threshold_is_honoured_and_none_means_the_models_default() -> None:
    image, instances = synthetic_instances(seed=4)
    fake = FakePredictor(instances)
    function = BarrierFunction(ModelHandler(fake))
    assert len(function.detect(context(0.6), PIL.Image.fromarray(image))) == int((instances.scores >= 0.6).sum())
    assert fake.calls[-1][1] == 0.6
    function.detect(context(None), PIL.Image.fromarray(image))
    assert fake.calls[-1][1] == 0.5


def test_gray_and_rgba_pil_images_are_converted(tiny_function) -> None:
    for mode in ("RGBA", "I;16"):
        image = PIL.Image.new(mode, (40, 30))
        shapes = tiny_function.detect(context(0.3), image)
        assert isinstance(shapes, list)
    assert tiny_function.handler.predictor.__class__ is Predictor


def test_create_takes_cvat_cli_parameters() -> None:
    function = create(config=str(TINY_CONFIG), weights="", device="cpu", backend="torch")
    assert isinstance(function, BarrierFunction) and function.handler.class_names == BARRIER_CLASSES
    polygons = create(config=str(TINY_CONFIG), weights="", device="cpu", backend="torch", shape="polygon")
    assert {label.type for label in polygons.spec.labels} == {"polygon"}
