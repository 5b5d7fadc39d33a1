"""The fused CPU deformable-sampling kernel: same numbers as ``deformable_sample``, same instances
through both CPU backends, a disk cache that a fresh process reuses, one log line without numba."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mask2former.config import load_config
from mask2former.config.build import build_model
from mask2former.modeling import pixel_decoder
from mask2former.modeling.pixel_decoder import fused_sampling
from mask2former.modeling.pixel_decoder.fused_sampling import fused_deformable_sample
from mask2former.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn, deformable_sample, sampling_mode
from mask2former.predictor import Predictor
from mask2former.weights import load_checkpoint

from .conftest import REPO_ROOT, SWIN_T_CONFIG, TINY_CONFIG

# the fallback test below simulates numba's absence, so it runs either way
needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")


def _inputs(shapes, *, batch=2, heads=8, head_dim=32, points=4, per_image_reference=False, seed=0):
    """Random inputs where many points fall outside their map (reference points beyond [0, 1],
    offsets of several pixels), so the zero padding is exercised on every side."""
    generator = torch.Generator().manual_seed(seed)
    rows = sum(h * w for h, w in shapes)
    queries = 37
    value = torch.randn(batch, rows, heads, head_dim, generator=generator)
    reference = torch.rand(batch if per_image_reference else 1, queries, 2, generator=generator) * 1.4 - 0.2
    offsets = torch.randn(batch, queries, heads, len(shapes), points, 2, generator=generator) * 4
    weights = torch.randn(batch, queries, heads, len(shapes) * points, generator=generator).softmax(-1)
    return value, shapes, reference, offsets, weights.view(batch, queries, heads, len(shapes), points)


@needs_numba
@pytest.mark.parametrize(("shapes", "head_dim", "per_image_reference"), [
    ([(13, 17)], 64, False),  # one level, odd sizes, two 32-channel blocks
    ([(13, 17), (7, 9), (4, 5), (1, 3)], 32, True),  # four levels, a reference point per image
    ([(11, 6), (5, 3), (3, 2)], 48, False),  # three 16-channel blocks
    ([(9, 7), (5, 4), (3, 2), (2, 1)], 4, True),  # head_dim 4 (the tiny models): the generic loop
])
def test_kernel_equals_deformable_sample(shapes, head_dim, per_image_reference):
    args = _inputs(shapes, head_dim=head_dim, per_image_reference=per_image_reference)
    expected = deformable_sample(*args)
    fused = fused_deformable_sample(*args)
    assert fused.shape == expected.shape == (2, 37, 8 * head_dim)
    assert fused.dtype == torch.float32
    assert (fused - expected).abs().max() <= 1e-4
    outside = (args[2][..., None, None, None, :] + args[3] / torch.tensor([17.0, 13.0]) - 0.5).abs() > 0.5
    assert outside.any(), "the inputs must put points outside the map"


@needs_numba
def test_kernel_splits_queries_between_threads_without_changing_a_bit():
    value, shapes, reference, offsets, weights = _inputs([(13, 17), (7, 9)])
    outputs = []
    for threads in (1, 2, 3):
        out = np.empty((2, 37, 8, 32), np.float32)
        fused_sampling.run_kernel(value.numpy(), np.asarray(shapes), reference.numpy(), offsets.numpy(),
                                  weights.numpy(), out, threads=threads)
        outputs.append(out)
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])


@needs_numba
def test_bf16_inputs_are_read_as_fp32():
    value, shapes, reference, offsets, weights = _inputs([(13, 17), (7, 9)])
    value = value.bfloat16()
    fused = fused_deformable_sample(value, shapes, reference, offsets, weights)
    assert fused.dtype == torch.bfloat16
    expected = deformable_sample(value.float(), shapes, reference, offsets, weights)
    assert (fused.float() - expected).abs().max() <= 2e-2  # the output's own bf16 rounding


@needs_numba
def test_kernel_refuses_gradients_and_the_layer_keeps_the_reference_for_training():
    value, shapes, reference, offsets, weights = _inputs([(13, 17)])
    with pytest.raises(RuntimeError, match="no backward"):
        fused_deformable_sample(value.requires_grad_(), shapes, reference, offsets, weights)
    with pytest.raises(ValueError, match="rows"):
        fused_deformable_sample(value.detach()[:, 1:], shapes, reference, offsets, weights)

    layer = MSDeformAttn(d_model=64, n_levels=2, n_heads=4, n_points=2)
    shapes = [(6, 7), (3, 4)]
    tokens = torch.randn(1, 54, 64)
    points = torch.rand(1, 54, 2)
    with sampling_mode("fused"):
        layer(tokens, points, tokens, shapes).sum().backward()  # autograd needs the reference path
        assert layer.value_proj.weight.grad is not None
        with torch.no_grad():
            fused = layer(tokens, points, tokens, shapes)
    with torch.no_grad():
        reference = layer(tokens, points, tokens, shapes)
    assert (fused - reference).abs().max() <= 1e-4


def _same_instances(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    np.testing.assert_array_equal(ours.class_ids, theirs.class_ids)
    np.testing.assert_allclose(ours.scores, theirs.scores, rtol=1e-4, atol=1e-5)
    for a, b in zip(ours.masks, theirs.masks, strict=True):
        union = np.logical_or(a, b).sum()
        assert union == 0 or np.logical_and(a, b).sum() / union >= 0.999


def _predictor(cfg, model, backend, fused, **kwargs):
    config = cfg.clone()
    config.merge_from_list(["DEPLOY.FUSED_SAMPLING", fused])
    made = Predictor(config, model=model, backend=backend, precision="fp32", score_threshold=0.0, **kwargs)
    assert ("fused sampling" in made.backend_description) == fused
    return made


@needs_numba
def test_parity_fixture_gives_the_same_instances_with_the_kernel(parity_dir, tmp_path):
    """Both CPU backends with the kernel against torch without it, on the upstream parity model
    (head_dim 4: the generic loop); at a second input size the converted graph with the operation
    is compiled again. (OpenVINO without the kernel equals torch: test_openvino_backend and the
    fallback test below.)"""
    pytest.importorskip("openvino")
    cfg = load_config(parity_dir / "tiny_config.yaml", ["DEPLOY.CACHE_DIR", str(tmp_path)])
    model = build_model(cfg).eval()
    load_checkpoint(model, parity_dir / "tiny_model_final.pth")
    torch_off = _predictor(cfg, model, "torch", False)
    torch_on, openvino_on = _predictor(cfg, model, "torch", True), _predictor(cfg, model, "openvino", True)
    expected = torch.load(parity_dir / "tiny_expected_outputs.pt", weights_only=True)
    first, second = (expected[name]["input_rgb_hwc_uint8"].numpy() for name in ("a_150x210", "c_200x131"))
    reference = torch_off(first)
    for predictor in (torch_on, openvino_on):
        _same_instances(predictor(first), reference)
    reference = torch_off(second)
    for predictor in (torch_on, openvino_on):
        _same_instances(predictor(second), reference)
    assert len(openvino_on.runner._compiled) == 2


@needs_numba
def test_random_swin_t_at_an_odd_size_gives_the_same_instances_with_the_kernel(tmp_path):
    """The real Swin-T pixel decoder (8 heads x 32 channels: the 32-channel path) at an odd size."""
    cfg = load_config(SWIN_T_CONFIG, ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "0",
                                      "DEPLOY.CACHE_DIR", str(tmp_path)])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    without = _predictor(cfg, model, "torch", False, max_detections=20)
    with_kernel = _predictor(cfg, model, "torch", True, max_detections=20)
    image = np.random.default_rng(3).integers(0, 256, (203, 291, 3), dtype=np.uint8)
    _same_instances(with_kernel(image), without(image))


def test_without_numba_the_backends_fall_back_with_one_log_line(tiny_cfg, tiny_model, tmp_path, monkeypatch, caplog):
    """numba not importable (as without the extra): one warning, then the graph/PyTorch sampling."""
    pytest.importorskip("openvino")
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" now raises ImportError
    monkeypatch.delitem(sys.modules, "mask2former.modeling.pixel_decoder.fused_kernel", raising=False)
    monkeypatch.delattr(pixel_decoder, "fused_kernel", raising=False)  # else "from . import" finds it
    fused_sampling._kernel_module.cache_clear()
    try:
        cfg = tiny_cfg.clone()
        cfg.merge_from_list(["DEPLOY.CACHE_DIR", str(tmp_path)])
        image = np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8)
        with caplog.at_level(logging.WARNING):
            torch_predictor = Predictor(cfg, model=tiny_model, backend="torch", score_threshold=0.0)
            ov_predictor = Predictor(cfg, model=tiny_model, backend="openvino", precision="fp32", score_threshold=0.0)
            assert fused_sampling.warm_up() is None
            _same_instances(ov_predictor(image), torch_predictor(image))
        assert "fused sampling" not in torch_predictor.backend_description + ov_predictor.backend_description
        assert any(op.get_type_name() == "GridSample" for op in ov_predictor.runner.converted.get_ops())
        lines = [r for r in caplog.records if r.name == fused_sampling.logger.name
                 and "fused deformable-attention kernel unavailable" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
        with pytest.raises(RuntimeError, match="needs numba"):
            fused_deformable_sample(*_inputs([(5, 6)]))
    finally:
        fused_sampling._kernel_module.cache_clear()  # the next caller imports the real numba again


def test_openvino_operation_widens_bf16_buffers():
    ov = pytest.importorskip("openvino")
    from mask2former.backends.openvino_fused_op import _float32

    values = np.array([[1.5, -2.25, 3.0], [0.0, 1024.0, -0.125]], np.float32)  # exact in bf16
    tensor = ov.Tensor(ov.Type.bf16, list(values.shape))
    tensor.data[...] = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.float16)
    np.testing.assert_array_equal(_float32(tensor), values)


@needs_numba
def test_prepare_fills_the_kernel_cache_and_a_new_process_loads_it(tmp_path):
    """``barrier-prepare-openvino`` compiles the kernel into $NUMBA_CACHE_DIR (the CPU function's
    image sets it and prepares at build time), not into the source tree (read-only in a site-packages
    install); a worker started afterwards loads it instead of compiling."""
    pytest.importorskip("openvino")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "ov" / "numba-kernels"),
           "BARRIER_OV_CACHE": str(tmp_path / "ov")}
    prepare = subprocess.run(
        [sys.executable, "-m", "barrier_annotator.tools.prepare_openvino", "--config-file", str(TINY_CONFIG)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    cache = tmp_path / "ov" / "numba-kernels"
    assert "fused sampling kernel ready" in prepare.stderr and str(cache) in prepare.stderr
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))
    worker = subprocess.run(
        [sys.executable, "-c", "import logging; logging.basicConfig(level=logging.DEBUG)\n"
         "from mask2former.modeling.pixel_decoder import fused_sampling; print(fused_sampling.warm_up())"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True)
    assert worker.stdout.strip() == str(cache)
    assert "kernel loaded" in worker.stderr, worker.stderr[-2000:]
