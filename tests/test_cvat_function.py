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

from mask2former.cvat import polygon_to_mask
from mask2former.data_catalog import BARRIER_CLASSES
from mask2former.predictor import Predictor
from mask2former.serving import ModelHandler
from tests.conftest import TINY_CONFIG
from tests.serving_fakes import FakePredictor, iou, synthetic_instances
from tests.test_function_handler import largest_component
from tools.cvat_function import BarrierFunction, create


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


def test_polygon_mode_when_cvat_asks_to_convert(tiny_function) -> None:
    shapes = tiny_function.detect(context(0.0, conv_mask_to_poly=True), PIL.Image.fromarray(FRAME))
    instances = tiny_function.handler.predictor(FRAME, score_threshold=0.0)
    assert [s.type.value for s in shapes] == ["polygon"] * len(instances)
    for shape, mask in zip(shapes, instances.masks, strict=True):
        assert iou(polygon_to_mask(shape.points, 48, 64), largest_component(mask)) >= 0.9
    for task_label_type in ("polygon", "any"):  # the SDK refuses converted masks on mask-only labels
        assert len(sdk_validate(tiny_function, shapes, True, task_label_type)[1]) == len(shapes)
    masks = tiny_function.detect(context(0.0), PIL.Image.fromarray(FRAME))
    with pytest.raises(BadFunctionError, match=r"type 'mask'|conv_mask_to_poly"):  # the SDK refuses masks here
        sdk_validate(tiny_function, masks, True, "any")


def test_polygons_of_known_barrier_parts() -> None:
    image, instances = synthetic_instances(seed=2, height=240, width=320)
    function = BarrierFunction(ModelHandler(FakePredictor(instances)))
    shapes = function.detect(context(0.0, conv_mask_to_poly=True), PIL.Image.fromarray(image))
    for shape, mask in zip(shapes, instances.masks, strict=True):
        assert iou(polygon_to_mask(shape.points, 240, 320), largest_component(mask)) >= 0.9
    masks = function.detect(context(0.0), PIL.Image.fromarray(image))
    for shape, mask in zip(masks, instances.masks, strict=True):
        np.testing.assert_array_equal(decode_mask(shape.points, image_width=320, image_height=240), mask)
    sdk_validate(function, masks, conv_mask_to_poly=False, task_label_type="any")


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
