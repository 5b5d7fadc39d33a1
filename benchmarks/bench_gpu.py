"""GPU inference figures for Swin-T and Swin-L: torch backend, fp32 / fp16 / bf16, batch 1 and 8.

Random weights, a 1080x1920 synthetic frame resized to short side 800 (800x1422, padded to
800x1440), as the CPU benchmark. Per row: the network alone (CUDA-synchronised, median of
``--repeats``), end-to-end per image through ``Predictor.predict_batch`` (decode-free: the frame
is already an array; resize and normalise on the CPU, network and post-processing of 20 kept
instances on the GPU, the bool masks copied back), and peak GPU memory. Needs a CUDA device;
prints one markdown table.

    python benchmarks/bench_gpu.py [--models swin_t swin_l] [--batches 1 8] [--precisions fp32 fp16 bf16]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import torch
from model_configs import CONFIGS, FRAME, benchmark_frame

from mask2former.config import load_config
from mask2former.config.build import build_model
from mask2former.predictor import Predictor

MODELS = ("swin_t", "swin_l")
OPTS = ["MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1440",
        "TEST.DETECTIONS_PER_IMAGE", "20"]

def _timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` after two warm-up calls (cuDNN autotuning, allocator)."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_row(predictor: Predictor, frame: np.ndarray, batch_size: int, repeats: int) -> dict[str, float]:
    batch, _ = predictor.network_input([frame] * batch_size)
    batch = batch.cuda()
    torch.cuda.reset_peak_memory_stats()
    network = _timed(lambda: predictor.runner(batch), repeats)
    frames = [frame] * batch_size
    end_to_end = _timed(lambda: predictor.predict_batch(frames), max(3, repeats // 2))
    return {"network": network / batch_size, "end_to_end": end_to_end / batch_size,
            "memory": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "fp16", "bf16"], choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    frame = benchmark_frame()
    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; frame {FRAME[0]}x{FRAME[1]} -> "
             f"800x1422 (padded 800x1440), 20 kept instances, random weights, median of {args.repeats}",
             "", "| model | precision | batch | network ms/img | end-to-end ms/img | img/s end-to-end | "
             "peak GPU GB |", "|---|---|---|---|---|---|---|"]
    for name in args.models:
        torch.manual_seed(0)
        cfg = load_config(CONFIGS[name], OPTS)
        model = build_model(cfg).eval()
        for precision in args.precisions:
            predictor = Predictor(cfg, model=model, device="cuda", backend="torch", precision=precision,
                                  score_threshold=0.0)
            for batch_size in args.batches:
                row = bench_row(predictor, frame, batch_size, args.repeats)
                lines.append(f"| {name} | {precision} | {batch_size} | {1000 * row['network']:.1f} | "
                             f"{1000 * row['end_to_end']:.1f} | {1 / row['end_to_end']:.1f} | {row['memory']:.1f} |")
                print(lines[-1], flush=True)
        del model, predictor
        torch.cuda.empty_cache()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
