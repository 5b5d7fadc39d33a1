"""``python -m barrier_annotator.training.train_net``: the seed's finetune commands on CPU, multi-process training
with gloo, --eval-only, --resume, exit codes and clear errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from barrier_annotator.training import distributed
from barrier_annotator.training.checkpointer import LAST_CHECKPOINT
from barrier_annotator.training.data.synthetic import generate_dataset
from barrier_annotator.training.distributed import LaunchError, find_free_port, launch, validate_launch
from barrier_annotator.training.metrics import read_metrics
from barrier_annotator.training.train_net import EXIT_USAGE, main

from .conftest import SWIN_L_CONFIG, SWIN_T_CONFIG, TINY_CONFIG

# The seed commands at a small input size, random weights (no download), two iterations on the CPU.
SMALL_CPU_RUN = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "1",
                 "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
                 "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0"]
TINY_RUN = ["MODEL.WEIGHTS", "", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
            "TEST.EVAL_PERIOD", "0", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
            "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
            "DATALOADER.NUM_WORKERS", "0", "SEED", "3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def seed_layout(tmp_path_factory) -> Path:
    """``<root>/safetybarrier/{images,annotations}``: what DATASETS.TRAIN/TEST of the seed configs name."""
    root = tmp_path_factory.mktemp("datasets")
    generate_dataset(root / "safetybarrier", num_train=4, num_val=3, image_size=96, seed=11, progress=False)
    return root


def _run(config: Path, root: Path, output: Path, *extra: str, flags: tuple[str, ...] = ()) -> int:
    return main(["--config-file", str(config), "--no-progress", "--datasets-root", str(root), *flags,
                 "OUTPUT_DIR", str(output), *extra])


def _check_trained(output: Path, iterations: int) -> None:
    assert (output / LAST_CHECKPOINT).read_text() == "model_final.pth"
    content = torch.load(output / "model_final.pth", weights_only=True, mmap=True)
    assert content["iteration"] == iterations - 1
    assert {"model", "optimizer", "scheduler"} <= set(content)
    losses = [line["total_loss"] for line in read_metrics(output / "metrics.json") if "total_loss" in line]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_seed_swin_t_finetune_command_runs_on_cpu(seed_layout, tmp_path):
    output = tmp_path / "output_tiny"
    assert _run(SWIN_T_CONFIG, seed_layout, output, *SMALL_CPU_RUN, "DATASETS.TEST", "()",
                flags=("--num-gpus", "1")) == 0
    _check_trained(output, 2)


@pytest.mark.slow
def test_seed_swin_l_finetune_command_runs_on_cpu(seed_layout, tmp_path):
    output = tmp_path / "output_large"
    assert _run(SWIN_L_CONFIG, seed_layout, output, *SMALL_CPU_RUN, "DATASETS.TEST", "()",
                flags=("--num-gpus", "1")) == 0
    _check_trained(output, 2)
    assert torch.load(output / "model_final.pth", weights_only=True, mmap=True)[
        "model"]["sem_seg_head.predictor.query_feat.weight"].shape[0] == 200  # Swin-L's 200 queries


def test_two_cpu_workers_train_and_evaluate_with_gloo(seed_layout, tmp_path):
    output = tmp_path / "ddp"
    status = _run(TINY_CONFIG, seed_layout, output, *TINY_RUN, "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "3",
                  flags=("--num-gpus", "2"))
    assert status == 0
    _check_trained(output, 3)
    assert (output / "log.txt.rank1").is_file()  # each worker logs; rank 0 writes everything else
    evals = [line for line in read_metrics(output / "metrics.json") if "segm/AP" in line]
    assert [line["iteration"] for line in evals] == [2]  # gathered from both ranks' shards


def test_eval_only_and_resume(seed_layout, tmp_path):
    output = tmp_path / "run"
    assert _run(TINY_CONFIG, seed_layout, output, *TINY_RUN, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()") == 0
    # --resume of a finished run: nothing left to train, no error
    assert _run(TINY_CONFIG, seed_layout, output, *TINY_RUN, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                flags=("--resume",)) == 0
    # --resume with a larger MAX_ITER continues from iteration 2
    assert _run(TINY_CONFIG, seed_layout, output, *TINY_RUN, "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()",
                flags=("--resume",)) == 0
    assert torch.load(output / "model_final.pth", weights_only=True)["iteration"] == 2
    evaluation = tmp_path / "eval"
    assert _run(TINY_CONFIG, seed_layout, evaluation, *TINY_RUN, "MODEL.WEIGHTS", str(output / "model_final.pth"),
                flags=("--eval-only",)) == 0
    lines = read_metrics(evaluation / "metrics.json")
    assert len(lines) == 1 and lines[0]["iteration"] == 2
    assert {"segm/AP", "segm/AP50", "segm/AP75", "segm/AP-toeboard"} <= set(lines[0])
    assert (evaluation / "curves.png").is_file()


def test_missing_dataset_lists_the_paths_tried(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert _run(TINY_CONFIG, tmp_path / "nowhere", tmp_path / "out", *TINY_RUN) == EXIT_USAGE
    message = caplog.text
    assert "safetybarrier_train" in message and "instances_train.json" in message and "--dataset" in message


def test_bad_override_and_missing_weights_exit_2(seed_layout, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert _run(TINY_CONFIG, seed_layout, tmp_path, "SOLVER.BASE_LRR", "0.1") == EXIT_USAGE
    assert "BASE_LRR" in caplog.text
    missing = str(tmp_path / "nope.pth")
    assert _run(TINY_CONFIG, seed_layout, tmp_path, *TINY_RUN, "MODEL.WEIGHTS", missing) == EXIT_USAGE
    assert "nope.pth" in caplog.text


def test_cuda_requested_without_gpu_is_a_clear_error(seed_layout, tmp_path, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    caplog.set_level(logging.ERROR)
    assert _run(TINY_CONFIG, seed_layout, tmp_path, *TINY_RUN, "MODEL.DEVICE", "cuda",
                flags=("--num-gpus", "2")) == EXIT_USAGE
    assert "MODEL.DEVICE cpu" in caplog.text


def test_launch_validates_multi_machine_flags():
    with pytest.raises(LaunchError, match="dist-url"):
        validate_launch(2, num_machines=2, machine_rank=0, dist_url="auto", device_type="cpu")
    with pytest.raises(LaunchError, match="machine-rank"):
        validate_launch(1, num_machines=2, machine_rank=2, dist_url="tcp://10.0.0.1:1234", device_type="cpu")


def _world() -> tuple[int, int, bool]:
    return distributed.get_rank(), distributed.get_world_size(), dist.is_initialized()


def test_torchrun_environment_is_joined_with_env_init(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(find_free_port())}.items():
        monkeypatch.setenv(name, value)
    assert launch(_world, num_gpus_per_machine=8, device_type="cpu") == (0, 1, True)  # torchrun's env wins
    assert not dist.is_initialized()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert launch(_world, num_gpus_per_machine=1, device_type="cpu") == (0, 1, False)
    assert os.environ.get("RANK") is None
