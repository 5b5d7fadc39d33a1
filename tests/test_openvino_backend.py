"""OpenVINO backend: same numbers as torch, one graph for every size, a cache that heals itself."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
import torch

from barrier_annotator.training.quick_fit import overfit_tiny_model, synthetic_scenes
from mask2former.backends import resolve_backend
from mask2former.config import load_config
from mask2former.config.build import build_model
from mask2former.predictor import Predictor
from mask2former.preprocess import normalize_and_pad, resize_image, resized_shape
from mask2former.weights import load_checkpoint

from .conftest import SWIN_T_CONFIG

ov_runtime = pytest.importorskip("mask2former.backends.openvino_runtime")
if not ov_runtime.openvino_available():  # pragma: no cover - the openvino extra is not installed
    pytest.skip("openvino is not installed", allow_module_level=True)
from mask2former.backends.ir_cache import ConvertedModelCache  # noqa: E402


def _cpu_supports(capability: str) -> bool:
    ov = ov_runtime.import_openvino()
    return capability in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _assert_same_instances(ours, theirs, *, min_iou: float = 0.999) -> None:
    """Same instances in the same order; a pixel whose logit is ~1e-6 from 0 may flip."""
    assert len(ours) == len(theirs)
    np.testing.assert_array_equal(ours.class_ids, theirs.class_ids)
    np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-3, atol=1e-4)
    for a, b in zip(ours.masks, theirs.masks, strict=True):
        union = np.logical_or(a, b).sum()
        assert union == 0 or np.logical_and(a, b).sum() / union >= min_iou


def test_telemetry_stays_off():
    ov_runtime.import_openvino()
    from openvino.tools.ovc import convert_impl

    assert convert_impl.tm.__name__.endswith("telemetry_stub")
    assert sys.modules.get("openvino_telemetry") is None


def test_parity_fixture_openvino_fp32_equals_torch(parity_dir, tmp_path):
    cfg = load_config(parity_dir / "tiny_config.yaml", ["DEPLOY.CACHE_DIR", str(tmp_path)])
    model = build_model(cfg).eval()
    load_checkpoint(model, parity_dir / "tiny_model_final.pth")
    case = torch.load(parity_dir / "tiny_expected_outputs.pt", weights_only=True)["a_150x210"]
    torch_predictor = Predictor(cfg, model=model, backend="torch", score_threshold=0.0)
    ov_predictor = Predictor(cfg, model=model, backend="openvino", precision="fp32", score_threshold=0.0)
    torch_predictor.short_edge = ov_predictor.short_edge = 0  # the fixtures were made unresized
    batch, _ = model.preprocess([case["input_rgb_hwc_uint8"].permute(2, 0, 1).float()])
    for ours, reference in zip(ov_predictor.runner(batch), torch_predictor.runner(batch), strict=True):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    image = case["input_rgb_hwc_uint8"].numpy()
    _assert_same_instances(ov_predictor(image), torch_predictor(image))
    # a second input size in the same process: the same converted graph, compiled again
    other = np.ascontiguousarray(np.rot90(image))
    _assert_same_instances(ov_predictor(other), torch_predictor(other))
    assert len(ov_predictor.runner._compiled) == 2


@pytest.fixture(scope="module")
def swin_t_predictors(tmp_path_factory):
    """Full-size random-init Swin-T; one OpenVINO conversion shared by the tests below."""
    cache = tmp_path_factory.mktemp("ov-cache")
    cfg = load_config(SWIN_T_CONFIG, ["MODEL.WEIGHTS", "", "DEPLOY.CACHE_DIR", str(cache),
                                      "INPUT.MIN_SIZE_TEST", "0"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    return (Predictor(cfg, model=model, backend="torch", score_threshold=0.0, max_detections=20),
            Predictor(cfg, model=model, backend="openvino", precision="fp32", score_threshold=0.0,
                      max_detections=20))


def test_swin_t_at_an_odd_size_matches_torch(swin_t_predictors):
    torch_predictor, ov_predictor = swin_t_predictors
    for height, width in [(600, 1000)]:
        image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
        tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()
        batch, _ = torch_predictor.model.preprocess([tensor])
        for ours, reference in zip(ov_predictor.runner(batch), torch_predictor.runner(batch), strict=True):
            # ~1e-5 of the scale for almost every query; float noise can flip a borderline pixel of a
            # query's attention mask (sigmoid < 0.5), and that query then differs a little more
            per_query = (ours - reference).abs().flatten(2).amax(-1)[0]
            scale = reference.abs().max()
            assert (per_query <= 1e-4 * scale).float().mean() >= 0.95
            assert per_query.max() <= 2e-3 * scale
        _assert_same_instances(ov_predictor(image), torch_predictor(image))


# Frames 1.35x the 128x160 network input, as a 1080p frame is to Swin-T's 800 px input: masks are
# compared at frame resolution, as in use.
EVAL_SIZE = (173, 216)


@pytest.fixture(scope="module")
def trained(tiny_cfg):
    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "128"])  # the network sees 128x160, as in training
    return cfg, overfit_tiny_model(cfg)


# bf16 moves scores by a few hundredths: an instance within SCORE_MARGIN of the 0.5 threshold may
# fall on either side of it, and two whose fp32 scores are within SCORE_MARGIN may swap ranks.
# Masks: measured on a Xeon with AMX (torch 2.11, OpenVINO 2026.4; fitted scenes at EVAL_SIZE),
# bf16 vs fp32 IoU per instance 0.91-1.0 with torch and 0.94-1.0 with OpenVINO, mean 0.98: a few
# flipped boundary pixels cost a small mask several points, so each instance must keep
# MIN_IOU and all of them together MIN_MEAN_IOU. On an AVX512-BF16 CPU without AMX (Zen 4, torch
# 2.13) the means are lower and move with any float perturbation: torch 0.971 with the graph
# sampling, 0.968 with the fused kernel (whose bf16 mask logits are closer to fp32's: mean
# |diff| 0.083 against 0.088), OpenVINO 0.984 / 0.976; hence 0.96.
THRESHOLD, SCORE_MARGIN = 0.5, 0.1
MIN_IOU, MIN_MEAN_IOU = 0.85, 0.96


def _fitted_scenes():
    """The scenes the model was fitted on, rendered at EVAL_SIZE: there it is as sure of its instances
    as a deployed model is on its own domain (on unseen scenes its scores hover around 0.5)."""
    return synthetic_scenes(3, seed=0, size=EVAL_SIZE)


def test_torch_bf16_keeps_instances_of_a_trained_model(trained):
    cfg, model = trained
    fp32 = Predictor(cfg, model=model, backend="torch", precision="fp32")
    bf16 = Predictor(cfg, model=model, backend="torch", precision="bf16")
    for scene in _fitted_scenes():
        # The network: every mask pixel fp32 is sure about (|logit| >= 0.5) keeps its side.
        batch = _network_input(fp32, scene.image)
        (logits32, masks32), (logits16, masks16) = fp32.runner(batch), bf16.runner(batch)
        sure = masks32.abs() >= 0.5
        assert ((masks32 > 0) == (masks16 > 0))[sure].float().mean() >= 0.999
        assert (logits32.softmax(-1) - logits16.softmax(-1)).abs().max() < 0.15
    _assert_bf16_keeps_instances(bf16, fp32, _fitted_scenes())


def _network_input(predictor: Predictor, image: np.ndarray) -> torch.Tensor:
    resized = resize_image(image, resized_shape(*image.shape[:2], predictor.short_edge, predictor.max_size))
    tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
    batch, _ = normalize_and_pad([tensor], predictor.pixel_mean, predictor.pixel_std, predictor.size_divisibility)
    return batch


@pytest.mark.skipif(not _cpu_supports("BF16"), reason="this CPU's OpenVINO plugin has no bf16 (needs AMX/AVX512-BF16)")
def test_openvino_bf16_keeps_instances_of_a_trained_model(trained, tmp_path):
    cfg, model = trained
    cfg = cfg.clone()
    cfg.merge_from_list(["DEPLOY.CACHE_DIR", str(tmp_path)])
    fp32 = Predictor(cfg, model=model, backend="openvino", precision="fp32")
    bf16 = Predictor(cfg, model=model, backend="openvino", precision="bf16")
    _assert_bf16_keeps_instances(bf16, fp32, _fitted_scenes())


def _assert_bf16_keeps_instances(bf16: Predictor, fp32: Predictor, scenes) -> None:
    """Every instance at the threshold has a twin (same class, mask IoU >= MIN_IOU, score within the
    margin) on the other side, unless its score is within the margin of the threshold; the twins
    of fp32 instances keep their order wherever fp32's scores are more than the margin apart; the
    twins' mean IoU over all scenes is at least MIN_MEAN_IOU."""
    low = THRESHOLD - SCORE_MARGIN
    ious: list[float] = []
    for scene in scenes:
        ours, reference = bf16(scene.image, score_threshold=low), fp32(scene.image, score_threshold=low)
        assert (reference.scores >= THRESHOLD + SCORE_MARGIN).any(), "the trained model should be sure of something"
        twin_of_reference, twin_of_ours = _twins(reference, ours), _twins(ours, reference)
        for source, twins in ((reference, twin_of_reference), (ours, twin_of_ours)):
            for i in np.flatnonzero(source.scores >= THRESHOLD):
                assert twins[i] is not None or source.scores[i] < THRESHOLD + SCORE_MARGIN, (
                    f"instance {i} (class {source.class_ids[i]}, score {source.scores[i]:.3f}) lost under bf16")
        ranked = [(reference.scores[i], *twin_of_reference[i]) for i in np.flatnonzero(reference.scores >= THRESHOLD)
                  if twin_of_reference[i] is not None]
        for (score_a, twin_a, _), (score_b, twin_b, _) in itertools.pairwise(ranked):
            assert twin_a < twin_b or score_a - score_b <= SCORE_MARGIN, "bf16 changed the ranking"
        ious.extend(iou for _, _, iou in ranked)
    assert np.mean(ious) >= MIN_MEAN_IOU, sorted(ious)


def _twins(source, other) -> list[tuple[int, float] | None]:
    """For each instance of ``source``: the best-overlapping unused instance of ``other`` with the
    same class, mask IoU >= MIN_IOU and a score within the margin, and that IoU (None if none)."""
    unused = set(range(len(other)))
    twins: list[tuple[int, float] | None] = []
    for mask, class_id, score in zip(source.masks, source.class_ids, source.scores, strict=True):
        best = None
        for j in sorted(unused):
            if other.class_ids[j] != class_id or abs(other.scores[j] - score) > SCORE_MARGIN:
                continue
            iou = np.logical_and(other.masks[j], mask).sum() / max(np.logical_or(other.masks[j], mask).sum(), 1)
            if iou >= MIN_IOU and (best is None or iou > best[1]):
                best = (j, float(iou))
        twins.append(best)
        if best is not None:
            unused.discard(best[0])
    return twins


def test_unsupported_precision_is_a_clear_error(tiny_cfg, tiny_model, tmp_path):
    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["DEPLOY.CACHE_DIR", str(tmp_path)])
    if not _cpu_supports("FP16"):
        with pytest.raises(ValueError, match="fp16 requested"):
            Predictor(cfg, model=tiny_model, backend="openvino", precision="fp16")
    with pytest.raises(ValueError, match="precision must be"):
        Predictor(cfg, model=tiny_model, backend="openvino", precision="int3")
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("tensorrt", torch.device("cpu"))


def test_cache_hit_skips_the_torch_model_and_damaged_entries_are_rebuilt(tiny_cfg, tiny_model, tmp_path, caplog):
    weights = tmp_path / "model_final.pth"
    torch.save({"model": tiny_model.state_dict()}, weights)
    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["DEPLOY.CACHE_DIR", str(tmp_path / "cache")])
    image = synthetic_scenes(1)[0].image

    first = Predictor(cfg, weights=weights, backend="openvino", precision="fp32", score_threshold=0.0)
    expected = first(image)
    assert first.model is not None  # converted on a cold cache
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != "compiled"]
    assert len(entries) == 1

    warm = Predictor(cfg, weights=weights, backend="openvino", precision="fp32", score_threshold=0.0)
    assert warm.model is None  # never built: the cached graph was used
    _assert_same_instances(warm(image), expected)

    binary = entries[0] / "model.bin"
    binary.write_bytes(binary.read_bytes()[:-16] + b"\0" * 16)  # a bit rot / half-written file
    healed = Predictor(cfg, weights=weights, backend="openvino", precision="fp32", score_threshold=0.0)
    assert healed.model is not None  # detected and rebuilt, not used
    assert "checksum mismatch" in caplog.text
    _assert_same_instances(healed(image), expected)
    assert ConvertedModelCache(tmp_path / "cache").load(entries[0].name) is not None

    other = tmp_path / "other.pth"  # different weights -> a different entry, never the stale one
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["sem_seg_head.predictor.class_embed.bias"] += 1.0
    torch.save({"model": state}, other)
    Predictor(cfg, weights=other, backend="openvino", precision="fp32")
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != "compiled"]) == 2


def test_file_digests_are_memoised_until_the_file_changes(tmp_path, monkeypatch):
    """A cold start compares the cache entry's stat, not a fresh SHA-256 of an ~800 MB Swin-L model.bin."""
    import hashlib

    from mask2former import utils

    memo, data = tmp_path / "digests.json", tmp_path / "model.bin"
    data.write_bytes(b"weights v1")
    assert utils.file_sha256(data, memo=memo) == hashlib.sha256(b"weights v1").hexdigest()
    with monkeypatch.context() as patch:
        patch.setattr(utils, "hashlib", None)  # any hashing now fails
        assert utils.file_sha256(data, memo=memo) == hashlib.sha256(b"weights v1").hexdigest()
    data.write_bytes(b"weights v2, rewritten")  # another size: file times can tick coarser than this test
    assert utils.file_sha256(data, memo=memo) == hashlib.sha256(b"weights v2, rewritten").hexdigest()
    assert len(json.loads(memo.read_text())) == 1  # the old version's line was dropped


def test_shipped_demo_model_with_fine_positions_matches_torch(tmp_path):
    """The demo's pretrained model (POSITION_FEATURES on) converts, and stays exact at two input sizes."""
    from barrier_annotator.checkout import checkout_path
    from barrier_annotator.tools.demo import PRETRAINED_CONFIG, shipped_weights
    from barrier_annotator.training.data.synthetic import render_sample

    cfg = load_config(checkout_path(PRETRAINED_CONFIG), ["DEPLOY.CACHE_DIR", str(tmp_path)])
    model = build_model(cfg).eval()
    load_checkpoint(model, shipped_weights())
    torch_predictor = Predictor(cfg, model=model, backend="torch", score_threshold=0.3)
    ov_predictor = Predictor(cfg, model=model, backend="openvino", precision="fp32", score_threshold=0.3)
    images = [render_sample(5, "val", 0, 640).image, render_sample(5, "val", 0, 448).image.transpose(1, 0, 2)]
    for image in images:
        ours, reference = ov_predictor(np.ascontiguousarray(image)), torch_predictor(np.ascontiguousarray(image))
        assert len(reference) >= 3  # a trained model: real instances, not noise
        # masks are upsampled 2x to the frame: a pixel whose logit is ~1e-6 from 0 may flip
        _assert_same_instances(ours, reference, min_iou=0.99)
    assert len(ov_predictor.runner._compiled) == 2
