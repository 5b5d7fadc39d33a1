"""The training engine on the tiny config and a few synthetic images: losses, checkpoints, exact
resume, NaN and interrupt handling, time budget, evaluation output, data stream resume."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from barrier_annotator.training.budget import TimeBudget
from barrier_annotator.training.checkpointer import LAST_CHECKPOINT
from barrier_annotator.training.data.dataset_records import ImageRecord
from barrier_annotator.training.data.sampler import TrainingSampler
from barrier_annotator.training.data.synthetic import generate_dataset
from barrier_annotator.training.engine import Trainer, TrainingDiverged, train
from barrier_annotator.training.loaders import GroupedBatchSampler
from barrier_annotator.training.metrics import read_metrics
from mask2former.config import load_config
from mask2former.config.build import build_model
from mask2former.weights import load_checkpoint

from .conftest import TINY_CONFIG

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> Path:
    """``<root>/safetybarrier`` (6 train, 3 val) and ``<root>/safetybarrier2`` (2 train): the seed layout."""
    root = tmp_path_factory.mktemp("datasets")
    generate_dataset(root / "safetybarrier", num_train=6, num_val=3, image_size=96, seed=5, progress=False)
    generate_dataset(root / "safetybarrier2", num_train=2, num_val=0, image_size=96, seed=6, progress=False)
    return root


def tiny_run_opts(root: Path, output: Path, *opts: str) -> list[str]:
    """Overrides of the tiny config: 64 px, few loss points, a step takes a fraction of a second."""
    return ["MODEL.WEIGHTS", "", "DATASETS.ROOT", str(root), "OUTPUT_DIR", str(output),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "0",
            "SOLVER.STEPS", "(1000,)", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "96", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
            "DATALOADER.NUM_WORKERS", "0", "SEED", "7", *opts]


def tiny_run_cfg(root: Path, output: Path, *opts: str):
    return load_config(TINY_CONFIG, tiny_run_opts(root, output, *opts))


class LossRecorder:
    """Callback: the (rank-averaged) total loss of every iteration, keyed by iterations done."""

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def __call__(self, trainer: Trainer) -> None:
        self.losses[trainer.iter] = trainer.history.latest("total_loss")


@pytest.fixture(scope="module")
def finished_run(datasets_root, tmp_path_factory):
    """4 iterations, checkpoint every 2, evaluation every 2 and at the end."""
    output = tmp_path_factory.mktemp("run") / "out"
    cfg = tiny_run_cfg(datasets_root, output, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2",
                       "TEST.EVAL_PERIOD", "2", "SEED", "-1")
    recorder = LossRecorder()
    metrics = train(cfg, progress=False, callbacks=[recorder])
    return cfg, output, recorder.losses, metrics


def test_losses_finite_and_decreasing(datasets_root, tmp_path):
    cfg = tiny_run_cfg(datasets_root, tmp_path, "DATASETS.TRAIN", "('safetybarrier2_train',)", "DATASETS.TEST",
                       "()", "SOLVER.MAX_ITER", "8", "INPUT.RANDOM_FLIP", "none")
    recorder = LossRecorder()
    assert train(cfg, progress=False, callbacks=[recorder]) == {}  # no test set: no metrics
    history = [recorder.losses[i] for i in range(1, 9)]
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.9 * history[0], history
    assert max(history[-2:]) < min(history[:2]), history


def test_run_outputs_follow_detectron2_layout(finished_run):
    cfg, output, losses, metrics = finished_run
    assert sorted(p.name for p in output.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    assert (output / LAST_CHECKPOINT).read_text() == "model_final.pth"
    content = torch.load(output / "model_final.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "iteration", "seed"} <= set(content)
    assert content["iteration"] == 3
    fresh = build_model(cfg)
    assert list(content["model"]) == list(fresh.state_dict())  # exactly the unwrapped model's keys
    report = load_checkpoint(fresh, output / "model_final.pth")
    assert report.ok and not report.class_head_skipped
    # the dumped config replays the run
    assert load_config(output / "config.yaml") == cfg
    # metrics.json: training lines and evaluation lines, iterations counted as detectron2 does
    lines = read_metrics(output / "metrics.json")
    evals = [line for line in lines if "segm/AP" in line]
    assert [line["iteration"] for line in evals] == [1, 3]
    assert {"segm/AP50", "segm/AP75", "segm/AP-rail_top", "segm/AP50-vertical_post"} <= set(evals[-1])
    training = [line for line in lines if "total_loss" in line]
    assert training and {"loss_ce", "loss_mask", "loss_dice", "lr", "time", "eta_seconds"} <= set(training[-1])
    assert metrics["segm/AP50"] == evals[-1]["segm/AP50"] or math.isnan(metrics["segm/AP50"])
    assert (output / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert "iter: 4/4" in (output / "log.txt").read_text()
    assert all(math.isfinite(v) for v in losses.values())


def test_resume_repeats_the_uninterrupted_run_exactly(finished_run, datasets_root, tmp_path):
    cfg, output, losses, _ = finished_run
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(output / "model_0000001.pth", resumed_dir)
    (resumed_dir / LAST_CHECKPOINT).write_text("model_0000001.pth")
    shutil.copy(output / "metrics.json", resumed_dir)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR, cfg.TEST.EVAL_PERIOD = str(resumed_dir), 0  # SEED -1: the checkpoint's seed is used
    recorder = LossRecorder()
    trainer = Trainer(cfg, resume=True, progress=False, callbacks=[recorder])
    assert trainer.start_iter == 2
    trainer.train()
    assert recorder.losses == {3: losses[3], 4: losses[4]}  # bit-identical next-step losses
    expected = torch.load(output / "model_final.pth", weights_only=True)["model"]
    final = torch.load(resumed_dir / "model_final.pth", weights_only=True)["model"]
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=0, msg=key)
    # metrics.json: the lines after the checkpoint were dropped and written again, not duplicated
    iterations = [line["iteration"] for line in read_metrics(resumed_dir / "metrics.json") if "segm/AP" in line]
    assert iterations == [1, 3]


def test_nan_loss_stops_with_the_iteration_and_keeps_the_last_good_checkpoint(datasets_root, tmp_path):
    cfg = tiny_run_cfg(datasets_root, tmp_path, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2",
                       "DATASETS.TEST", "()")
    trainer = Trainer(cfg, progress=False)
    criterion = trainer.criterion

    def poisoned(outputs, targets):
        losses = criterion(outputs, targets)
        if trainer.iter == 3:
            losses["loss_mask"] = losses["loss_mask"] * math.nan
        return losses

    trainer.criterion = poisoned
    with pytest.raises(TrainingDiverged, match="iteration 3") as info:
        trainer.train()
    assert "loss_mask=nan" in str(info.value) and "model_0000001.pth" in str(info.value)
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_final.pth").exists()


# A real SIGINT to a training process of its own, as a user's Ctrl-C: a signal to the pytest
# process would also hit whatever earlier tests left there (see openvino_backend.shared_core).
INTERRUPTED_RUN = """
import os, signal, sys
import torch
from mask2former.config import load_config
from barrier_annotator.training.engine import Trainer, TrainingInterrupted

torch.set_num_threads(1)
cfg = load_config(sys.argv[1], sys.argv[2:])

def interrupt_after_two(trainer):
    if trainer.iter == 2:
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: finish the next step, save, stop

handler = signal.getsignal(signal.SIGINT)
try:
    Trainer(cfg, progress=False, callbacks=[interrupt_after_two]).train()
except TrainingInterrupted as error:
    assert signal.getsignal(signal.SIGINT) is handler, "the training handler is still installed"
    print(error)
    sys.exit(130)
"""


def test_interrupt_saves_a_checkpoint_that_resumes(datasets_root, tmp_path):
    opts = tiny_run_opts(datasets_root, tmp_path, "SOLVER.MAX_ITER", "5", "DATASETS.TEST", "()")
    run = subprocess.run([sys.executable, "-c", INTERRUPTED_RUN, str(TINY_CONFIG), *opts],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 130, run.stderr
    assert "--resume" in run.stdout
    assert (tmp_path / LAST_CHECKPOINT).read_text() == "model_0000002.pth"
    trainer = Trainer(load_config(TINY_CONFIG, opts), resume=True, progress=False)
    assert trainer.start_iter == 3
    trainer.train()
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 4


def test_time_budget_stops_saves_and_evaluates(datasets_root, tmp_path):
    cfg = tiny_run_cfg(datasets_root, tmp_path, "SOLVER.MAX_ITER", "100000")
    trainer = Trainer(cfg, max_seconds=1.0, progress=False)
    metrics = trainer.train()
    assert 1 <= trainer.iter < 100000
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == trainer.iter - 1
    assert "segm/AP" in metrics


def test_budget_plan_fits_schedule_to_measured_speed(monkeypatch):
    budget = TimeBudget(100.0, fit_schedule=True)
    budget.start()
    monkeypatch.setattr(budget, "_start", budget._start - 10.0)  # 10 s used
    for _ in range(25):
        budget.record_step(0.5)
    new_max, steps = budget.plan(done=25, max_iter=1000, steps=(800, 900))
    assert new_max == pytest.approx(25 + 90 / 0.5, abs=2)
    assert steps == (round(800 * new_max / 1000), round(900 * new_max / 1000))
    assert TimeBudget(100.0).plan(25, 1000, (800,)) is None  # not asked to fit


def test_batch_stream_resumes_at_any_iteration_with_aspect_grouping():
    records = [ImageRecord(f"{i}.jpg", 100 + 50 * (i % 3 == 0), 120, i) for i in range(11)]

    def batches(start: int, count: int, group: bool) -> list:
        sampler = GroupedBatchSampler(TrainingSampler(len(records), seed=3, rank=0, world_size=1), records, 4,
                                      group_by_aspect=group, start=start)
        stream = iter(sampler)
        return [next(stream) for _ in range(count)]

    for group in (True, False):
        full = batches(0, 12, group)
        assert batches(5, 7, group) == full[5:]
    for batch in batches(0, 12, True):
        assert len({records[index].width >= records[index].height for index, _ in batch}) == 1


def test_metrics_lines_are_json(finished_run):
    _, output, _, _ = finished_run
    for text in (output / "metrics.json").read_text().splitlines():
        json.loads(text)
