"""``barrier-predict``: one overlay per input, never one replacing another (issue 13, item 9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from barrier_annotator.tools import predict

from .conftest import TINY_CONFIG

NAMES = ["a/img.bmp", "a/img.tif", "a/img.webp", "a/frame_0001.jpg", "b/frame_0001.jpg"]


def test_names_keep_the_file_name_and_mirror_the_folders(tmp_path):
    inputs = [str(tmp_path / "in" / name) for name in NAMES]
    out = tmp_path / "out"
    targets = predict.overlay_paths(inputs, out)
    assert [path.relative_to(out).as_posix() for path in targets.values()] == [
        "a/img.bmp_overlay.png", "a/img.tif_overlay.png", "a/img.webp_overlay.png",
        "a/frame_0001.jpg_overlay.png", "b/frame_0001.jpg_overlay.png"]
    single = predict.overlay_paths([str(tmp_path / "in" / "a" / "img.bmp")], out)
    assert list(single.values()) == [out / "img.bmp_overlay.png"]  # one input: straight into --output
    relative = predict.overlay_paths(["x/../a/f.jpg", "a/f.jpg", "a/g.jpg"], out)
    assert relative["x/../a/f.jpg"] == relative["a/f.jpg"] == out / "f.jpg_overlay.png"  # the same file
    with pytest.raises(ValueError, match="case-insensitive"):
        predict.overlay_paths([str(tmp_path / "A.jpg"), str(tmp_path / "a.jpg")], out)


def test_every_input_gets_its_own_overlay(tmp_path, tiny_model):
    weights = tmp_path / "tiny.pth"
    torch.save({"model": tiny_model.state_dict()}, weights)
    rng = np.random.default_rng(0)
    inputs = []
    for index, name in enumerate(NAMES):
        path = tmp_path / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((40, 56, 3), 40 * index, dtype=np.uint8) + rng.integers(0, 30, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        inputs.append(str(path))
    out = tmp_path / "out"
    argv = ["--config-file", str(TINY_CONFIG), "--weights", str(weights), "--device", "cpu", "--backend", "torch",
            "--input", *inputs, inputs[0], "--output", str(out), "--opts", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96"]
    assert predict.main(argv) == 0
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*.png"))
    assert written == sorted(f"{name}_overlay.png" for name in NAMES)
    brightness = [np.asarray(Image.open(out / f"{name}_overlay.png")).mean() for name in NAMES]
    assert brightness == sorted(brightness)  # each overlay is of its own input (inputs get brighter)
