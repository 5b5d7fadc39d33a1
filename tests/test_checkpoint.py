"""Checkpoint loading: safe unpickling, mismatch reports that name keys, downloads."""

from __future__ import annotations

import http.server
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mask2former.config import load_config
from mask2former.config.build import build_model
from mask2former.weights import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    load_checkpoint,
    read_checkpoint,
    resolve_weights,
)

from .conftest import TINY_CONFIG


def _model(*opts: str):
    torch.manual_seed(1)
    return build_model(load_config(TINY_CONFIG, list(opts)))


def _save_pkl(path: Path, model) -> Path:
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    path.write_bytes(pickle.dumps({"model": state, "__author__": "test", "matching_heuristics": True}))
    return path


def test_pkl_and_pth_roundtrip_load_every_tensor(tmp_path):
    source = _model()
    pth = tmp_path / "model_final.pth"
    torch.save({"model": source.state_dict(), "iteration": 7}, pth)
    for path in (pth, _save_pkl(tmp_path / "zoo.pkl", source)):
        target = _model("SEED", "3")
        torch.nn.init.zeros_(target.sem_seg_head.predictor.query_feat.weight)
        report = load_checkpoint(target, path)
        assert report.ok and len(report.loaded) == len(source.state_dict())
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), key


def test_swin_small_into_swin_tiny_config_names_the_extra_blocks(tmp_path):
    # Swin-S has 18 blocks in stage 3 where Swin-T has 6 (small widths keep the file tiny)
    small = _model("MODEL.SWIN.DEPTHS", "[2, 2, 18, 2]")
    path = _save_pkl(tmp_path / "model_final_1e7f22.pkl", small)
    with pytest.raises(CheckpointMismatchError) as raised:
        load_checkpoint(_model("MODEL.SWIN.DEPTHS", "[2, 2, 6, 2]"), path)
    message = str(raised.value)
    assert "unexpected" in message
    # 12 extra blocks of 14 tensors each, named as one readable range
    assert "unexpected (in checkpoint, not in model): 168" in message
    assert "backbone.layers.2.blocks.{6-17}.* (168 tensors)" in message


def test_query_count_mismatch_names_query_keys(tmp_path):
    path = tmp_path / "q200.pth"
    torch.save({"model": _model("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "40").state_dict()}, path)
    target = _model("MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "20")
    before = target.state_dict()["sem_seg_head.predictor.query_feat.weight"].clone()
    with pytest.raises(CheckpointMismatchError) as raised:
        load_checkpoint(target, path)
    message = str(raised.value)
    assert "sem_seg_head.predictor.query_feat.weight (40, 32) vs model (20, 32)" in message
    assert "sem_seg_head.predictor.query_embed.weight" in message
    # nothing was copied into the model
    assert torch.equal(target.state_dict()["sem_seg_head.predictor.query_feat.weight"], before)


def test_coco_80_class_checkpoint_into_4_class_model_reports_only_the_class_head(tmp_path):
    path = _save_pkl(tmp_path / "coco.pkl", _model("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "80"))
    target = _model()
    report = load_checkpoint(target, path)
    assert report.ok
    assert [key for key, _, _ in report.class_head_skipped] == [
        "sem_seg_head.predictor.class_embed.weight",
        "sem_seg_head.predictor.class_embed.bias",
        "criterion.empty_weight",
    ]
    assert not report.missing and not report.unexpected and not report.mismatched
    assert "80 -> 4 classes" in report.summary()
    assert target.criterion.empty_weight.tolist() == pytest.approx([1, 1, 1, 1, 0.1])


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/barrier-annotator-pwned",))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_pickle_is_refused_not_executed(tmp_path, suffix):
    marker = Path("/tmp/barrier-annotator-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / f"evil{suffix}"
    payload = {"model": {"backbone.patch_embed.proj.weight": _RunsCode()}}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match=r"(posix|os)\.system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_legacy_maskformer_v1_layout_is_converted_and_reported(tmp_path):
    state = _model().state_dict()
    legacy = {}
    for key, value in state.items():
        key = key.replace("sem_seg_head.pixel_decoder.", "sem_seg_head.")
        legacy[key.replace("predictor.query_feat", "predictor.static_query")] = value
    path = tmp_path / "v1.pth"
    torch.save({"model": legacy}, path)
    report = load_checkpoint(_model(), path)
    assert report.ok
    assert ("sem_seg_head.adapter_1.weight", "sem_seg_head.pixel_decoder.adapter_1.weight") in report.renamed
    assert ("sem_seg_head.predictor.static_query.weight",
            "sem_seg_head.predictor.query_feat.weight") in report.renamed
    assert "converted" in report.summary()


def test_backbone_only_imagenet_file_loads_by_suffix_and_says_so(tmp_path):
    source = _model()
    backbone = {k.removeprefix("backbone."): v.numpy() for k, v in source.state_dict().items()
                if k.startswith("backbone.")}
    backbone["head.weight"] = np.zeros((1000, 256), np.float32)  # classifier extras are ignored
    path = tmp_path / "swin_tiny_patch4_window7_224.pkl"
    path.write_bytes(pickle.dumps({"model": backbone, "__author__": "third_party", "matching_heuristics": True}))
    target = _model("SEED", "5")
    report = load_checkpoint(target, path)
    assert report.ok and report.backbone_only
    assert torch.equal(target.backbone.norm0.weight, source.backbone.norm0.weight)
    assert "backbone-only" in report.summary()


def test_truncated_or_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    torch.save({"model": _model().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointMismatchError, match=r"broken\.pth"):
        read_checkpoint(path)
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"definitely not a pickle")
    with pytest.raises((CheckpointMismatchError, UnsafeCheckpointError)):
        read_checkpoint(garbage)


@pytest.fixture
def weights_server(tmp_path):
    """Serves tmp_path/www over loopback HTTP; ``truncate`` makes it lie about the length."""
    root = tmp_path / "www"
    root.mkdir()
    state = {"truncate": False}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

        def copyfile(self, source, outputfile):
            data = source.read()
            outputfile.write(data[: len(data) // 2] if state["truncate"] else data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, state
    server.shutdown()


def test_weights_url_is_downloaded_once_into_the_cache(weights_server, tmp_path):
    base, root, _ = weights_server
    _save_pkl(root / "model_final.pkl", _model())
    cache = tmp_path / "cache"
    first = resolve_weights(f"{base}/model_final.pkl", cache)
    assert first.read_bytes() == (root / "model_final.pkl").read_bytes()
    (root / "model_final.pkl").unlink()  # a second resolve must not need the server
    assert resolve_weights(f"{base}/model_final.pkl", cache) == first
    assert load_checkpoint(_model(), first).ok


def test_interrupted_download_leaves_nothing_behind(weights_server, tmp_path):
    base, root, state = weights_server
    _save_pkl(root / "model_final.pkl", _model())
    state["truncate"] = True
    cache = tmp_path / "cache"
    with pytest.raises(WeightsNotFoundError):
        resolve_weights(f"{base}/model_final.pkl", cache)
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_missing_local_weights_name_the_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"nothing-here\.pth"):
        resolve_weights(tmp_path / "nothing-here.pth")
