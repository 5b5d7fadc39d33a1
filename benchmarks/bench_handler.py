"""Nuclio handler overhead vs model time, for one 1080x1920 frame with the full Swin-T config on CPU.

    python benchmarks/bench_handler.py [--backend torch|openvino] [--instances 20] [--repeats 3]

The network really runs (random weights: no checkpoint can be downloaded here), and its output is
then REPLACED by ``--instances`` confident, bar-shaped queries (same tensor shapes), so that
post-processing and encoding see what a trained model's 20 barrier instances look like instead of
a random model's noise. Model time is the network call alone; handler overhead is everything else
``ModelHandler.handle`` does for the request (base64 + image decode, resize/normalise, post-processing,
mask/polygon encoding, JSON). Target: overhead <= 10% of model time with 20 instances.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from mask2former.config import load_config
from mask2former.predictor import Predictor
from mask2former.preprocess import resized_shape
from mask2former.serving import ModelHandler
from mask2former.serving.requests import parse_detector_request
from training.data.synthetic import render_scene

CONFIG = Path(__file__).resolve().parents[1] / (
    "configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml")
FRAME = (1080, 1920)


def bar_outputs(class_logits: torch.Tensor, mask_logits: torch.Tensor, instances: int,
                input_size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the real shapes where ``instances`` queries are confident rails/posts/toeboards."""
    rng = np.random.default_rng(seed)
    batch, queries, classes = class_logits.shape
    low_h, low_w = mask_logits.shape[-2:]
    visible_h, visible_w = input_size[0] // 4, input_size[1] // 4  # mask logits are at 1/4 of the input
    masks = np.full((queries, low_h, low_w), -8.0, np.float32)
    for query in range(instances):
        canvas = np.zeros((low_h, low_w), np.float32)
        vertical = query % 4 == 3  # every fourth is a post
        length = rng.uniform(20, 60) if vertical else rng.uniform(100, 330)
        thickness = rng.uniform(2, 4) if vertical else rng.uniform(1.5, 4)
        center = (rng.uniform(20, visible_w - 20), rng.uniform(20, visible_h - 20))
        angle = rng.uniform(80, 100) if vertical else rng.uniform(-12, 12)
        box = cv2.boxPoints((center, (length, thickness), angle))
        cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], 1.0)
        masks[query] = cv2.GaussianBlur(canvas, (0, 0), 1.0) * 16 - 8
    logits = rng.normal(0, 1, (queries, classes)).astype(np.float32)
    logits[:, -1] += 4.0
    logits[np.arange(instances), [3 if q % 4 == 3 else q % 3 for q in range(instances)]] += 10.0
    return (torch.from_numpy(logits)[None].expand(batch, -1, -1).contiguous(),
            torch.from_numpy(masks)[None].expand(batch, -1, -1, -1).contiguous())


class TimedRunner:
    """Wraps the predictor's network runner: times the real call, then injects bar outputs."""

    def __init__(self, runner, instances: int) -> None:
        self.runner, self.instances = runner, instances
        self.times: list[tuple[float, float]] = []  # (wall, process CPU) seconds per call
        self.input_size: tuple[int, int] = (0, 0)

    def __call__(self, batch: torch.Tensor):
        wall, cpu = time.perf_counter(), time.process_time()
        class_logits, mask_logits = self.runner(batch)
        self.times.append((time.perf_counter() - wall, time.process_time() - cpu))
        return bar_outputs(class_logits, mask_logits, self.instances, self.input_size)

    def describe(self) -> str:
        return self.runner.describe()


class Clock:
    """Wall and process-CPU seconds of a block: on a shared machine CPU time is the steadier one."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def frame_body() -> tuple[dict, int]:
    scene = render_scene(np.random.default_rng(0), *FRAME)
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG", quality=90)
    return {"image": base64.b64encode(buffer.getvalue()).decode(), "threshold": 0.5}, len(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino", "auto"))
    parser.add_argument("--config-file", default=str(CONFIG))
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    predictor = Predictor(load_config(args.config_file, ["MODEL.WEIGHTS", ""]), backend=args.backend)
    timed = TimedRunner(predictor.runner, args.instances)
    predictor.runner = timed
    handler = ModelHandler(predictor)
    body, jpeg_size = frame_body()
    request = parse_detector_request(body, default_threshold=0.5)
    timed.input_size = resized_shape(*FRAME, predictor.short_edge, predictor.max_size)

    rows: dict[str, list[tuple[float, float]]] = {key: [] for key in
                                                  ("model", "overhead", "decode", "predict", "encode", "total")}
    kept, size = 0, 0
    for run in range(args.repeats + 1):  # the first run warms up (and converts, for OpenVINO)
        with Clock() as total:
            reply = handler.handle(body)
        assert reply.status == 200, reply.body[:300]
        model = timed.times[-1]
        with Clock() as decode:
            parse_detector_request(body, default_threshold=0.5)
        with Clock() as predict:
            instances = handler.predict(request.image, 0.5)
        with Clock() as encode:
            handler.detector_json(instances)
        if run == 0:
            continue
        kept, size = len(instances), len(reply.body)
        rows["model"].append(model)
        rows["overhead"].append((total.wall - model[0], total.cpu - model[1]))
        rows["decode"].append((decode.wall, decode.cpu))
        rows["predict"].append((predict.wall - timed.times[-1][0], predict.cpu - timed.times[-1][1]))
        rows["encode"].append((encode.wall, encode.cpu))
        rows["total"].append((total.wall, total.cpu))

    median = {key: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
              for key, values in rows.items()}
    print(f"frame {FRAME[0]}x{FRAME[1]} JPEG {jpeg_size / 1024:.0f} KB, {args.config_file.rsplit('/', 1)[-1]}, "
          f"backend {timed.describe()}, torch threads {args.threads}, {kept} instances "
          f"(injected bar-shaped outputs), median of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':<44}{'wall s':>9}{'CPU s':>9}")
    labels = {"model": "model (network forward)", "overhead": "handler overhead (handle() - model)",
              "decode": "  base64 + image decode", "predict": "  resize/normalise/pad + post-processing",
              "encode": "  mask + polygon encoding + JSON", "total": "end to end (handle())"}
    for key, label in labels.items():
        wall, cpu = median[key]
        note = ""
        if key == "overhead":
            model_wall, model_cpu = median["model"]
            note = f"   {100 * wall / model_wall:.1f}% of model wall, {100 * cpu / model_cpu:.1f}% of its CPU"
        print(f"{label:<44}{wall:9.3f}{cpu:9.3f}{note}")
    print(f"response body {size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
