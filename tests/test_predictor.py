"""The predictor API: sizes, batches, thresholds, channel order, export at any size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mask2former.io import ImageDecodeError
from mask2former.modeling.meta_arch import ExportableMaskFormer
from mask2former.postprocess import ResizeGeometry, instances_from_outputs, reference_instances
from mask2former.predictor import Predictor, resized_shape
from mask2former.structures import boxes_from_masks


@pytest.fixture(scope="module")
def predictor(tiny_cfg, tiny_model):
    return Predictor(tiny_cfg, model=tiny_model, backend="torch", score_threshold=0.0, max_detections=10)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("height", "width", "max_size", "expected"),
    [(1080, 1920, 1333, (750, 1333)), (1080, 1920, 2000, (800, 1422)), (1920, 1080, 1333, (1333, 750)),
     (600, 800, 1333, (800, 1067)), (10, 4000, 1333, (3, 1333)), (800, 800, 1333, (800, 800))],
)
def test_resize_matches_detectron2_rounding(height, width, max_size, expected):
    assert resized_shape(height, width, 800, max_size) == expected


@pytest.mark.parametrize(("height", "width"), [(37, 61), (321, 97), (97, 333), (1, 240), (240, 1), (1, 1), (64, 64)])
def test_odd_sizes_give_masks_at_the_original_size(predictor, height, width):
    instances = predictor(_image(height, width))
    assert instances.image_size == (height, width)
    assert instances.masks.shape == (len(instances), height, width)
    assert instances.masks.dtype == np.bool_
    np.testing.assert_array_equal(instances.boxes, boxes_from_masks(instances.masks))
    assert np.all(np.diff(instances.scores) <= 0)
    assert len(instances) <= 10
    assert all(mask.any() for mask in instances.masks)


def test_batch_equals_single_images(predictor):
    images = [_image(96, 128, 1), _image(96, 128, 2)]
    batched = predictor.predict_batch(images)
    for image, result in zip(images, batched, strict=True):
        single = predictor(image)
        np.testing.assert_allclose(result.scores, single.scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(result.masks, single.masks)


def test_threshold_keeps_exactly_the_instances_scoring_above_it(predictor):
    image = _image(120, 160, 3)
    everything = predictor(image, score_threshold=0.0)
    assert len(everything) > 0
    cut = float(np.median(everything.scores))
    kept = predictor(image, score_threshold=cut)
    np.testing.assert_array_equal(kept.scores, everything.scores[everything.scores >= cut])
    with pytest.raises(ValueError, match="within"):
        predictor(image, score_threshold=1.5)


def test_bgr_input_is_flipped(predictor):
    image = _image(64, 96, 4)
    rgb = predictor(image)
    bgr = predictor(np.ascontiguousarray(image[:, :, ::-1]), channels="BGR")
    np.testing.assert_array_equal(rgb.masks, bgr.masks)


def test_paths_and_encoded_bytes_are_accepted(predictor, tmp_path):
    import cv2

    image = _image(50, 70, 5)
    path = tmp_path / "frame.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    from_array = predictor(image)
    np.testing.assert_array_equal(predictor(path).masks, from_array.masks)
    np.testing.assert_array_equal(predictor(path.read_bytes()).masks, from_array.masks)


@pytest.mark.parametrize("bad", [np.zeros((10, 10, 2), np.uint8), np.zeros((10, 10, 3), np.float32), b"not an image"])
def test_bad_inputs_are_clear_errors(predictor, bad):
    with pytest.raises(ImageDecodeError):
        predictor(bad)


def test_threshold_first_path_equals_upstream_selection_on_random_outputs():
    """Score-threshold-first and windowed upsampling keep upstream's masks and scores."""
    generator = torch.Generator().manual_seed(0)
    class_logits = torch.randn(30, 5, generator=generator) * 3
    mask_logits = torch.randn(30, 20, 28, generator=generator) * 4
    geometry = ResizeGeometry(input_size=(75, 108), padded_size=(80, 112), output_size=(151, 217))
    reference = reference_instances(class_logits, mask_logits, geometry, top_k=25)
    fast = instances_from_outputs(class_logits, mask_logits, geometry, list("abcd"), score_threshold=0.3, top_k=25)
    keep = (reference["scores"] >= 0.3) & reference["pred_masks"].flatten(1).any(1)
    order = reference["scores"][keep].argsort(descending=True)
    assert len(fast) == int(keep.sum()) > 0
    np.testing.assert_allclose(fast.scores, reference["scores"][keep][order].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(fast.class_ids, reference["pred_classes"][keep][order].numpy())
    differing = (fast.masks != reference["pred_masks"][keep][order].numpy()).sum()
    assert differing <= 2


def test_one_traced_graph_serves_every_input_size(tiny_model):
    """No shape freezes into a constant: trace at one size, run at others, same as eager."""
    network = ExportableMaskFormer(tiny_model).eval()
    with torch.no_grad():
        traced = torch.jit.trace(network, torch.randn(1, 3, 128, 192), check_trace=False)
        for shape in [(1, 3, 224, 160), (2, 3, 96, 320), (1, 3, 64, 96)]:
            x = torch.randn(shape)
            for ours, eager in zip(traced(x), network(x), strict=True):
                torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)
