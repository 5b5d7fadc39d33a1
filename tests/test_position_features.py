"""Fine pixel position features (the tiny demo model's option that tells one post from the next)."""

from __future__ import annotations

import math

import pytest
import torch

from mask2former.config import load_config
from mask2former.config.build import build_model
from mask2former.modeling.position_encoding import PixelPositionFeatures
from tests.conftest import TINY_CONFIG as TINY


def test_cells_are_encoded_at_their_centre_in_input_pixels():
    features = PixelPositionFeatures(num_freqs=3, min_period=16, stride=4)(torch.zeros(2, 7, 5, 6))
    assert features.shape == (1, 12, 5, 6)
    # x block: sin of 3 frequencies, then cos; cell (row 2, column 3) has its centre at x = 14 px
    x_sin = features[0, 6:9, 2, 3]
    expected = torch.tensor([math.sin(2 * math.pi * 14 / period) for period in (16, 32, 64)])
    torch.testing.assert_close(x_sin, expected)


def test_similarity_of_two_cells_depends_on_their_offset_only():
    # What lets a query carrying its own position mask "here" and not the identical post next to it.
    features = PixelPositionFeatures(num_freqs=5, min_period=12, stride=4)(torch.zeros(1, 1, 1, 64))[0, :, 0]
    gram = features.T @ features
    offset = 5
    along_diagonal = torch.stack([gram[i, i + offset] for i in range(64 - offset)])
    torch.testing.assert_close(along_diagonal, along_diagonal[:1].expand_as(along_diagonal), atol=1e-4, rtol=0)
    assert gram[10, 10] > gram[10, 13] > 0


def test_periods_a_coarse_map_cannot_resolve_are_left_out():
    features = PixelPositionFeatures(num_freqs=4, min_period=12, stride=16)(torch.zeros(1, 1, 4, 4))
    zero = [period < 2.5 * 16 for period in (12, 24, 48, 96)]
    for channel in range(16):
        assert bool((features[0, channel] == 0).all()) == zero[channel % 4]


def test_option_adds_parameters_only_when_asked(tmp_path):
    plain = build_model(load_config(TINY)).state_dict()
    cfg = load_config(TINY, ["MODEL.SEM_SEG_HEAD.POSITION_FEATURES", "4"])
    model = build_model(cfg).eval()
    added = sorted(set(model.state_dict()) - set(plain))
    assert added and all("position_proj" in key for key in added)
    assert set(plain) <= set(model.state_dict())
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 96, 128))
    assert outputs["pred_masks"].shape == (1, cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES, 24, 32)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        PixelPositionFeatures(num_freqs=0, min_period=12, stride=4)
