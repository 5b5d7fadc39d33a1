"""barrier-select on a folder: deterministic scores, no two near-duplicates, resumable scoring, bad input.

The pool is a synthetic walk-through pool (runs of near-duplicate frames, ``synthetic_walk``) at 64
px, scored by the tiny random-init model (it scores about 0.2, so it keeps instances at 0.2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from barrier_annotator.selection import strategies
from barrier_annotator.selection.scorer import FrameScorer
from barrier_annotator.tools import select_frames
from barrier_annotator.training.data.synthetic import generate_dataset
from mask2former.io import read_image
from mask2former.predictor import Predictor
from tests.conftest import TINY_CONFIG

SIZE_OPTS = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "112", "TEST.DETECTIONS_PER_IMAGE", "8"]
THRESHOLD = 0.2
RUNS = [6, 6, 1, 1, 1, 1]  # two walk-throughs of six near-duplicate frames, four single views


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights(tiny_weights) -> Path:
    return tiny_weights


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """16 frames: frame i belongs to run ``RUN_OF[i]``."""
    root = tmp_path_factory.mktemp("walk")
    generate_dataset(root, num_train=sum(RUNS), num_val=0, image_size=64, progress=False, walk_runs={"train": RUNS})
    return root / "images" / "train"


RUN_OF = {f"{index:06d}.jpg": run for index, run in enumerate(r for r, n in enumerate(RUNS) for _ in range(n))}


def cli(input_dir: Path, output: Path, weights: Path, *extra: str) -> list[str]:
    return ["--input", str(input_dir), "--output", str(output), "--config-file", str(TINY_CONFIG),
            "--weights", str(weights), "--device", "cpu", "--backend", "torch", "--confidence-threshold",
            str(THRESHOLD), "--workers", "1", "--no-progress", *extra, "--opts", *SIZE_OPTS]


def selection(output: Path) -> dict:
    return json.loads((output / "selection.json").read_text())


def chosen_names(output: Path) -> list[str]:
    return [row["frame"] for row in selection(output)["chosen"]]


def predictor_for(tiny_cfg, weights: Path) -> Predictor:
    cfg = tiny_cfg.clone()
    cfg.merge_from_list(SIZE_OPTS)
    return Predictor(cfg, weights=str(weights), device="cpu", backend="torch", score_threshold=THRESHOLD)


# --- scores and strategies -------------------------------------------------------------------

def test_scores_are_deterministic_for_a_fixed_model(tiny_cfg, weights, pool):
    image = read_image(pool / "000003.jpg")
    first = FrameScorer(predictor_for(tiny_cfg, weights)).score(image)
    again = FrameScorer(predictor_for(tiny_cfg, weights)).score(image)  # a fresh load of the same weights
    assert first.signals == again.signals
    assert first.uncertainty == again.uncertainty
    np.testing.assert_array_equal(first.embedding, again.embedding)
    assert set(first.signals) == {"threshold_ambiguity", "class_entropy", "mask_ambiguity"}
    assert 0 < first.uncertainty <= 1 and abs(float(np.linalg.norm(first.embedding)) - 1) < 1e-5


@pytest.mark.parametrize("strategy", strategies.STRATEGIES)
def test_the_same_seed_picks_the_same_frames(strategy):
    rng = np.random.default_rng(3)
    uncertainty, embeddings = rng.uniform(size=30), rng.normal(size=(30, 8)).astype(np.float32)
    picks = [strategies.select(strategy, 6, uncertainty=uncertainty, embeddings=embeddings, seed=5) for _ in range(2)]
    assert [p.index for p in picks[0]] == [p.index for p in picks[1]]
    other = strategies.select(strategy, 6, uncertainty=uncertainty, embeddings=embeddings, seed=6)
    if strategy == "random":
        assert [p.index for p in other] != [p.index for p in picks[0]]


def test_hybrid_and_diversity_skip_near_duplicates_uncertainty_does_not():
    """Three clusters of near-copies; the most uncertain frames are all copies of one scene."""
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16, dtype=np.float32)
    embeddings = np.concatenate([centre + 0.01 * rng.normal(size=(5, 16)) for centre in centres]).astype(np.float32)
    uncertainty = np.array([0.9, 0.89, 0.88, 0.87, 0.86] + [0.5] * 5 + [0.4] * 5)
    cluster = np.repeat(np.arange(3), 5)
    by_uncertainty = strategies.select("uncertainty", 3, uncertainty=uncertainty, embeddings=embeddings)
    assert {int(cluster[p.index]) for p in by_uncertainty} == {0}
    for strategy in ("diversity", "hybrid"):
        picks = strategies.select(strategy, 3, uncertainty=uncertainty, embeddings=embeddings)
        assert sorted(int(cluster[p.index]) for p in picks) == [0, 1, 2], strategy
    hybrid = strategies.select("hybrid", 1, uncertainty=uncertainty, embeddings=embeddings)
    assert hybrid[0].index == 0  # the most uncertain frame first
    # a scene already labelled is kept away from: its copies come last
    labelled = embeddings[:1]
    picks = strategies.select("hybrid", 2, uncertainty=uncertainty, embeddings=embeddings, labelled=labelled)
    assert sorted(int(cluster[p.index]) for p in picks) == [1, 2]


@pytest.mark.parametrize("strategy", ["diversity", "hybrid"])
def test_near_duplicate_walk_frames_are_not_both_chosen(strategy, weights, pool, tmp_path):
    output = tmp_path / strategy
    assert select_frames.main(cli(pool, output, weights, "--count", "4", "--strategy", strategy)) == 0
    runs = [RUN_OF[name] for name in chosen_names(output)]
    assert len(runs) == 4 and len(set(runs)) == 4, runs
    rows = selection(output)["chosen"]
    assert all(row["why"] for row in rows) and rows[1]["distance"] > 0
    assert (output / "contact_sheet.jpg").stat().st_size > 0 and (output / "scores.png").is_file()
    header = (output / "selection.csv").read_text().splitlines()[0]
    assert header.startswith("rank,frame,key,uncertainty")


# --- the ledger, resuming, bad input -----------------------------------------------------------

def test_a_frame_chosen_once_is_never_chosen_again(weights, pool, tmp_path):
    output = tmp_path / "out"
    assert select_frames.main(cli(pool, output, weights, "--count", "5", "--strategy", "uncertainty")) == 0
    first = set(chosen_names(output))
    assert select_frames.main(cli(pool, output, weights, "--count", "5", "--strategy", "uncertainty")) == 0
    second = set(chosen_names(output))
    assert len(first) == len(second) == 5 and not first & second
    counts = selection(output)["counts"]
    assert counts["excluded_chosen_before"] == 5 and counts["scored"] == 0  # every score came from the cache
    ledger = json.loads((output / "chosen.json").read_text())
    assert len(ledger["frames"]) == 10 and len(ledger["selections"]) == 2


def test_a_killed_scoring_run_continues_with_the_frames_left(weights, pool, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert select_frames.main(cli(pool, reference, weights, "--count", "4")) == 0

    real_score = FrameScorer.score
    calls = {"n": 0}

    def killed_after_five(self, image):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_score(self, image)

    output = tmp_path / "out"
    monkeypatch.setattr(FrameScorer, "score", killed_after_five)
    assert select_frames.main(cli(pool, output, weights, "--count", "4")) == 130
    assert not (output / "selection.json").exists() and not (output / "chosen.json").exists()
    cache = list((output / "scores").glob("*.jsonl"))
    assert len(cache) == 1 and len(cache[0].read_text().splitlines()) == 5
    monkeypatch.setattr(FrameScorer, "score", real_score)

    assert select_frames.main(cli(pool, output, weights, "--count", "4")) == 0
    counts = selection(output)["counts"]
    assert (counts["reused_scores"], counts["scored"]) == (5, len(RUN_OF) - 5)
    assert chosen_names(output) == chosen_names(reference)
    assert [row["uncertainty"] for row in selection(output)["chosen"]] == \
        [row["uncertainty"] for row in selection(reference)["chosen"]]


def test_corrupt_frames_are_listed_and_skipped_exit_1(weights, pool, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("000000.jpg", "000006.jpg", "000012.jpg"):
        (folder / name).write_bytes((pool / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    output = tmp_path / "out"
    assert select_frames.main(cli(folder, output, weights, "--count", "5")) == 1
    document = selection(output)
    assert sorted(item.split(":")[0] for item in document["skipped"]["unreadable"]) == ["broken.jpg", "empty.png"]
    assert sorted(chosen_names(output)) == ["000000.jpg", "000006.jpg", "000012.jpg"]
    assert document["counts"]["skipped"] == 2


@pytest.mark.parametrize("extra", [
    ["--count", "0"],
    ["--count", "3", "--strategy", "loudest"],
    ["--count", "3", "--create-task", "next"],        # a task needs --host and --project
    ["--count", "3", "--auth", "alice:secret"],       # never a password on the command line
])
def test_bad_options_exit_2(extra, weights, pool, tmp_path):
    with pytest.raises(SystemExit) as error:
        select_frames.main(cli(pool, tmp_path / "out", weights, *extra))
    assert error.value.code == 2
    assert not (tmp_path / "out").exists()


def test_no_source_and_missing_folders_exit_2(weights, tmp_path):
    with pytest.raises(SystemExit) as error:
        select_frames.main(cli(tmp_path, tmp_path / "out", weights, "--count", "1")[2:])
    assert error.value.code == 2
    assert select_frames.main(cli(tmp_path / "missing", tmp_path / "out", weights, "--count", "1")) == 2
    (tmp_path / "empty").mkdir()
    assert select_frames.main(cli(tmp_path / "empty", tmp_path / "out2", weights, "--count", "1")) == 2
    assert not (tmp_path / "out2" / "selection.json").exists()


def test_a_cvat_export_frames_a_person_drew_on_are_labelled_not_candidates(weights, pool, tmp_path):
    from barrier_annotator.cvat import CvatDocument, LabelSpec
    from barrier_annotator.training.data.synthetic import CLASS_NAMES

    export = tmp_path / "export"
    (export / "images").mkdir(parents=True)
    document = CvatDocument.new([LabelSpec(name) for name in CLASS_NAMES])
    for index, name in enumerate(["000000.jpg", "000001.jpg", "000006.jpg", "000012.jpg"]):
        (export / "images" / name).write_bytes((pool / name).read_bytes())
        entry = document.add_image(name, 64, 48, image_id=index)
        if name == "000000.jpg":
            entry.add_mask_rle("toeboard", [0, 4], (0, 0, 2, 2), source="manual")
        if name == "000006.jpg":
            entry.add_mask_rle("toeboard", [0, 4], (0, 0, 2, 2), source="semi-auto")  # a model's: still open
    document.save(export / "annotations.xml")
    output = tmp_path / "out"
    assert select_frames.main(cli(export, output, weights, "--count", "9", "--flip")) == 0
    document = selection(output)
    assert sorted(chosen_names(output)) == ["000001.jpg", "000006.jpg", "000012.jpg"]
    assert document["counts"]["labelled"] == 1
    assert all("flip_disagreement" in row["signals"] for row in document["chosen"])  # the second pass ran


def test_an_output_folder_inside_the_input_is_not_part_of_the_pool(weights, pool, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("000000.jpg", "000006.jpg", "000012.jpg"):
        (folder / name).write_bytes((pool / name).read_bytes())
    output = folder / "selection"
    assert select_frames.main(cli(folder, output, weights, "--count", "1")) == 0
    assert (output / "contact_sheet.jpg").is_file()
    assert select_frames.main(cli(folder, output, weights, "--count", "1")) == 0
    assert selection(output)["counts"]["frames"] == 3  # not the contact sheet nor the plot
