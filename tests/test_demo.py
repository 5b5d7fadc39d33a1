"""The README's main command, shortened: every step runs for real, and its outputs are what CVAT reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from barrier_annotator.cvat.xml_document import CvatDocument
from barrier_annotator.tools.demo import main


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_demo_trains_labels_and_writes_a_cvat_task_datumaro_reads(tmp_path, capsys):
    import datumaro as dm

    output = tmp_path / "demo"
    code = main(["--output", str(output), "--train-minutes", "0.1", "--train-images", "8", "--val-images", "3",
                 "--label-images", "3", "--size", "160", "--threshold", "0", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mask AP on" in printed and str(output / "labelled" / "annotations.xml") in printed

    run = output / "training_run"
    assert (run / "model_final.pth").is_file()
    evaluations = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines()
                   if "segm/AP" in line]
    assert evaluations and np.isfinite(evaluations[-1]["segm/AP"])

    labelled = output / "labelled"
    document = CvatDocument.load(labelled / "annotations.xml")
    assert len(document.images) == 3
    written = {image.name: len(image.masks()) for image in document.images}
    assert all(count > 0 for count in written.values())  # threshold 0: every kept detection is written
    assert sorted(p.name for p in (labelled / "visuals").iterdir()) == sorted(written)

    dataset = dm.Dataset.import_from(str(labelled / "annotations.xml"), "cvat")
    items = {item.id: item for item in dataset}
    assert {f"{item_id}.jpg" for item_id in items} == set(written)
    for item_id, item in items.items():
        masks = [a for a in item.annotations if a.type == dm.AnnotationType.mask]
        assert len(masks) == written[f"{item_id}.jpg"]
        assert item.media.data.shape[:2] == masks[0].image.shape


def test_demo_from_scratch_trains_the_tiny_cpu_config(tmp_path, capsys):
    output = tmp_path / "demo"
    code = main(["--output", str(output), "--from-scratch", "--weights", str(tmp_path / "not_needed.pth"),
                 "--train-minutes", "0.05", "--train-images", "4", "--val-images", "2", "--label-images", "1",
                 "--size", "128", "--threshold", "0", "--no-progress"])
    assert code == 0
    assert "trained from scratch:" in capsys.readouterr().out
    assert not (output / "pretrained_eval").exists()
    assert "POSITION_FEATURES: 0" in (output / "training_run" / "config.yaml").read_text()


def test_demo_rejects_empty_sets(tmp_path):
    assert main(["--output", str(tmp_path), "--label-images", "0"]) == 2


def test_shipped_checkpoint_is_the_released_file_and_loads_strictly():
    import hashlib

    from barrier_annotator.checkout import checkout_path
    from barrier_annotator.tools import demo
    from mask2former.config import load_config
    from mask2former.config.build import build_model
    from mask2former.weights import load_checkpoint

    weights = demo.shipped_weights()
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == demo.PRETRAINED_SHA256
    report = load_checkpoint(build_model(load_config(checkout_path(demo.PRETRAINED_CONFIG))), weights)
    assert report.ok and not report.missing and not report.class_head_skipped
    assert demo.check_shipped_weights(weights) is None


def test_demo_refuses_a_damaged_shipped_checkpoint_before_doing_anything(tmp_path, monkeypatch, caplog):
    from barrier_annotator.tools import demo

    damaged = tmp_path / "tiny_synthetic.pth"
    data = bytearray(demo.shipped_weights().read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(demo, "shipped_weights", lambda: damaged)
    output = tmp_path / "demo"
    assert main(["--output", str(output)]) == 2
    assert "damaged or not the released file" in caplog.text and not output.exists()
    damaged.unlink()
    assert main(["--output", str(output)]) == 2
    assert "is missing" in caplog.text and not output.exists()
