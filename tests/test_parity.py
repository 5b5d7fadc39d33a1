"""The model is upstream Mask2Former: same state-dict layout, same numbers at every stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mask2former.config import load_config
from mask2former.config.build import build_model
from mask2former.postprocess import ResizeGeometry, instances_from_outputs, reference_instances
from mask2former.predictor import Predictor
from mask2former.weights import load_checkpoint

from .conftest import REPO_ROOT

CONFIGS_AND_KEYS = [
    ("configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml",
     "keys_swin_tiny_safetybarrier.tsv"),
    ("configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
     "keys_swin_large_safetybarrier.tsv"),
    ("configs/coco/instance-segmentation/swin/maskformer2_swin_large_IN21k_384_bs16_100ep.yaml",
     "keys_swin_large_coco.tsv"),
]
RTOL, ATOL = 1e-4, 1e-5


def _read_keys(path) -> dict[str, tuple[str, str]]:
    rows = path.read_text().splitlines()
    assert rows[0].split("\t") == ["key", "shape", "dtype"]
    return {key: (shape, dtype) for key, shape, dtype in (row.split("\t") for row in rows[1:])}


@pytest.mark.parametrize(("config", "keys_file"), CONFIGS_AND_KEYS)
def test_full_config_state_dict_equals_upstream(parity_dir, config, keys_file):
    cfg = load_config(REPO_ROOT / config)
    with torch.device("meta"):  # full Swin-L without allocating its 216M parameters
        model = build_model(cfg)
    built = {k: (str(list(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    expected = _read_keys(parity_dir / keys_file)
    assert sorted(set(expected) - set(built)) == []
    assert sorted(set(built) - set(expected)) == []
    assert {k: v for k, v in built.items() if expected[k] != v} == {}


@pytest.fixture(scope="module")
def expected(parity_dir):
    return torch.load(parity_dir / "tiny_expected_outputs.pt", weights_only=True)


@pytest.fixture(scope="module", params=["tiny_model_final.pth", "tiny_model_zoo_style.pkl"])
def parity_model(request, parity_dir):
    cfg = load_config(parity_dir / "tiny_config.yaml")
    model = build_model(cfg).eval()
    report = load_checkpoint(model, parity_dir / request.param)
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert not report.class_head_skipped and not report.renamed
    assert len(report.loaded) == len(model.state_dict())
    return cfg, model


def _close(actual: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(actual, reference, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["a_150x210", "b_96x96", "c_200x131"])
def test_every_stage_matches_upstream(parity_model, expected, name):
    _, model = parity_model
    case = expected[name]
    image = case["input_rgb_hwc_uint8"].permute(2, 0, 1).float()
    batch, sizes = model.preprocess([image])
    with torch.no_grad():
        features = model.backbone(batch)
        mask_features, multi_scale = model.sem_seg_head.pixel_decoder(features)
        outputs = model.sem_seg_head.predictor(multi_scale, mask_features)
    for level in ("res2", "res3", "res4", "res5"):
        _close(features[level], case["backbone"][level])
    _close(mask_features, case["mask_features"])
    assert len(multi_scale) == len(case["multi_scale_features"])
    for ours, theirs in zip(multi_scale, case["multi_scale_features"], strict=True):
        _close(ours, theirs)
    _close(outputs["pred_logits"], case["pred_logits"])
    _close(outputs["pred_masks"], case["pred_masks"])
    assert len(outputs["aux_outputs"]) == len(case["aux_pred_logits"])
    for ours, theirs in zip(outputs["aux_outputs"], case["aux_pred_logits"], strict=True):
        _close(ours["pred_logits"], theirs)

    geometry = ResizeGeometry(sizes[0], tuple(batch.shape[-2:]), sizes[0])
    reference = reference_instances(outputs["pred_logits"][0], outputs["pred_masks"][0], geometry, top_k=20)
    order = reference["scores"].argsort(descending=True)
    theirs = case["instances"]
    _close(reference["scores"][order], theirs["scores"])
    assert torch.equal(reference["pred_classes"][order], theirs["pred_classes"])
    assert torch.equal(reference["pred_masks"][order], theirs["pred_masks"])


@pytest.mark.parametrize("name", ["a_150x210", "b_96x96", "c_200x131"])
def test_predictor_instances_match_upstream(parity_model, expected, name):
    """The product's path (threshold-first, windowed upsampling) gives upstream's instances."""
    cfg, model = parity_model
    case = expected[name]
    predictor = Predictor(cfg, model=model, backend="torch", score_threshold=0.0, max_detections=20)
    predictor.short_edge = 0  # the fixtures were made without resizing
    instances = predictor(case["input_rgb_hwc_uint8"].numpy())
    theirs = case["instances"]
    non_empty = theirs["pred_masks"].flatten(1).any(1)
    np.testing.assert_allclose(instances.scores, theirs["scores"][non_empty].numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(instances.class_ids, theirs["pred_classes"][non_empty].numpy())
    np.testing.assert_array_equal(instances.masks, theirs["pred_masks"][non_empty].numpy())
    assert instances.labels[0] in ("rail_top", "rail_mid", "toeboard", "vertical_post")


def test_fast_postprocess_equals_reference_when_resizing(parity_model, expected):
    """With a resize back to a larger original size, both stages of upsampling still agree."""
    _, model = parity_model
    image = expected["a_150x210"]["input_rgb_hwc_uint8"].permute(2, 0, 1).float()
    batch, sizes = model.preprocess([image])
    with torch.no_grad():
        outputs = model(batch)
    geometry = ResizeGeometry(sizes[0], tuple(batch.shape[-2:]), (433, 601))
    reference = reference_instances(outputs["pred_logits"][0], outputs["pred_masks"][0], geometry, top_k=20)
    fast = instances_from_outputs(outputs["pred_logits"][0], outputs["pred_masks"][0], geometry,
                                  ["a", "b", "c", "d"], score_threshold=0.0, top_k=20)
    order = reference["scores"].argsort(descending=True)
    keep = reference["pred_masks"][order].flatten(1).any(1)
    np.testing.assert_allclose(fast.scores, reference["scores"][order][keep].numpy(), rtol=1e-4, atol=1e-5)
    differing = (fast.masks != reference["pred_masks"][order][keep].numpy()).sum()
    # float32 resampling order differs by ~1e-5; only pixels with |logit| that small could flip
    assert differing <= max(2, 1e-5 * fast.masks.size)
