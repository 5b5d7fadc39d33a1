"""Fixtures the tests build themselves: tiny random-init configs/models, the upstream parity files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mask2former.config import load_config
from mask2former.config.build import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("BARRIER_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))
TINY_CONFIG = REPO_ROOT / "configs" / "safetybarrier" / "instance-segmentation" / "swin" / "tiny_cpu.yaml"
SWIN_T_CONFIG = REPO_ROOT / "configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
SWIN_L_CONFIG = (REPO_ROOT / "configs/safetybarrier/instance-segmentation/swin/"
                 "maskformer2_swin_large_IN21k_384_bs16_100ep.yaml")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# "auto" would pick OpenVINO wherever it is installed; tests that want it ask for it by name.
os.environ.setdefault("BARRIER_BACKEND", "torch")


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """``../shared/parity``; under CI it must exist (a missing fixture is a failure, not a skip)."""
    if not (PARITY_DIR / "tiny_model_final.pth").is_file():
        message = f"upstream parity fixtures not found in {PARITY_DIR}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return PARITY_DIR


@pytest.fixture(scope="session")
def tiny_cfg():
    """The repository's tiny CPU config (random init, no weights)."""
    cfg = load_config(TINY_CONFIG, ["MODEL.WEIGHTS", ""])
    return cfg


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    return build_model(tiny_cfg).eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_model) -> Path:
    """``tiny_model``'s weights as a ``model_final.pth``-style file, for commands that load a path."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": tiny_model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training tests: the tiny model is hundreds of small ops per step, as fast on one thread, and
    two spin-waiting OpenMP threads on a shared two-core machine were seen 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
