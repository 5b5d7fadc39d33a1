"""Nuclio detector at 1080p: model time, the handler's own overhead, and the answer's size and
serialisation time for 20 to 60 instances, Swin-T on CPU.

    python benchmarks/bench_handler.py [--backend torch|openvino|auto] [--instances 20 40 60] [--repeats 3] \
        [KEY VALUE ...]   (config overrides)

The network really runs (random weights: no checkpoint can be downloaded here), and its output is
then REPLACED by ``--instances`` confident queries shaped like a trained model's barrier masks
(rails and toeboards spanning most of the frame, slightly slanted; short vertical posts), with
the same tensor shapes, so that post-processing and encoding see a real answer's masks instead of
a random model's noise. Per instance count it prints, for one 1080x1920 frame:

- model: the network call alone;
- handler overhead: everything else ``ModelHandler.handle`` does (base64 + image decode,
  resize/normalise/pad, post-processing, serialisation);
- serialisation: ``detector_json`` (polygon tracing + the ``mask`` pixels + JSON), and the bytes
  of the answer (CVAT 2.73 reads only raw 0/1 pixels in ``mask``: two bytes per pixel of each
  instance's box, whatever the function does);
- for scale, what parsing that answer costs a Python reader (``json.loads``, as CVAT's
  ``reply.json()``) and Nuclio's Python wrapper re-encoding the body (``nuclio_sdk``), when installed.

Medians of ``--repeats`` runs after one warm-up, wall and process-CPU seconds (on a shared
machine CPU time is the steadier one). Runs on 2 cores: one model call per request (10 with the
defaults), about 5 minutes with torch on a busy 2-core AMD EPYC; ``--instances 20 --repeats 1``
for a quick look.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from barrier_annotator.serving import ModelHandler
from barrier_annotator.training.data.synthetic import render_scene
from mask2former.config import load_config
from mask2former.predictor import Predictor
from mask2former.preprocess import resized_shape
from mask2former.structures import Instances

CONFIG = Path(__file__).resolve().parents[1] / (
    "configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml")
FRAME = (1080, 1920)


def barrier_query_mask(kind: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-resolution logits (1/4 of the network input) of one barrier part.

    ``kind`` 0/1: a rail, 50-100 % of the frame wide, 1.5-4 px thick (6-22 px at 1080p), within
    +-10 degrees; 2: a toeboard, 40-100 % wide, 4-9 px thick; 3: a post, 20-80 px tall, 2-4 px wide.
    """
    canvas = np.zeros((height, width), np.float32)
    if kind == 3:
        size, angle = (rng.uniform(20, 80), rng.uniform(2, 4)), rng.uniform(80, 100)
    elif kind == 2:
        size, angle = (rng.uniform(0.4, 1.0) * width, rng.uniform(4, 9)), rng.uniform(-8, 8)
    else:
        size, angle = (rng.uniform(0.5, 1.0) * width, rng.uniform(1.5, 4)), rng.uniform(-10, 10)
    center = (rng.uniform(0.25, 0.75) * width, rng.uniform(0.1, 0.9) * height)
    cv2.fillPoly(canvas, [np.round(cv2.boxPoints((center, size, angle))).astype(np.int32)], 1.0)
    return cv2.GaussianBlur(canvas, (0, 0), 1.0) * 16 - 8


def barrier_outputs(class_logits: torch.Tensor, mask_logits: torch.Tensor, instances: int,
                    input_size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the real shapes where ``instances`` queries are confident rails/toeboards/posts."""
    rng = np.random.default_rng(seed)
    batch, queries, classes = class_logits.shape
    if instances > queries:
        raise ValueError(f"the model has {queries} queries: at most that many instances")
    low_h, low_w = mask_logits.shape[-2:]
    visible_h, visible_w = input_size[0] // 4, input_size[1] // 4  # mask logits are at 1/4 of the input
    masks = np.full((queries, low_h, low_w), -8.0, np.float32)
    kinds = [query % 4 for query in range(instances)]
    for query, kind in enumerate(kinds):
        masks[query, :visible_h, :visible_w] = barrier_query_mask(kind, rng, visible_h, visible_w)
    logits = rng.normal(0, 1, (queries, classes)).astype(np.float32)
    logits[:, -1] += 4.0
    class_of_kind = (0, 1, 2, 3)  # rail_top, rail_mid, toeboard, vertical_post
    logits[np.arange(instances), [class_of_kind[kind] for kind in kinds]] += 10.0
    return (torch.from_numpy(logits)[None].expand(batch, -1, -1).contiguous(),
            torch.from_numpy(masks)[None].expand(batch, -1, -1, -1).contiguous())


class TimedRunner:
    """Wraps the predictor's network runner: times the real call, then injects barrier outputs."""

    def __init__(self, runner, input_size: tuple[int, int]) -> None:
        self.runner, self.input_size = runner, input_size
        self.instances = 20
        self.times: list[tuple[float, float]] = []  # (wall, process CPU) seconds per call

    def __call__(self, batch: torch.Tensor):
        wall, cpu = time.perf_counter(), time.process_time()
        class_logits, mask_logits = self.runner(batch)
        self.times.append((time.perf_counter() - wall, time.process_time() - cpu))
        return barrier_outputs(class_logits, mask_logits, self.instances, self.input_size)

    def describe(self) -> str:
        return self.runner.describe()


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    @property
    def pair(self) -> tuple[float, float]:
        return self.wall, self.cpu


class TimedHandler(ModelHandler):
    """The product's handler, with its prediction and serialisation steps timed from inside one
    ``handle()`` call (so each run costs one model call)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last: dict[str, tuple[float, float]] = {}
        self.instances: Instances | None = None

    def predict(self, image: np.ndarray, threshold: float) -> Instances:
        with Clock() as clock:
            instances = super().predict(image, threshold)
        self.last["predict"], self.instances = clock.pair, instances
        return instances

    def detector_json(self, instances: Instances) -> str:
        with Clock() as clock:
            text = super().detector_json(instances)
        self.last["serialise"] = clock.pair
        return text


def nuclio_wrapper_encode(body: str) -> tuple[float, float] | None:
    """What Nuclio's Python wrapper does with the returned body (Response -> JSON message)."""
    try:
        import nuclio_sdk
        import nuclio_sdk.json_encoder
    except ImportError:
        return None
    encoder = nuclio_sdk.json_encoder.Encoder()
    with Clock() as clock:
        response = nuclio_sdk.Response.from_entrypoint_output(
            encoder.encode, nuclio_sdk.Response(body=body, content_type="application/json", status_code=200))
        encoder.encode(response)
    return clock.pair


def cpu_name() -> str:
    """The CPU model (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def frame_body() -> tuple[dict, int]:
    scene = render_scene(np.random.default_rng(0), *FRAME)
    buffer = io.BytesIO()
    Image.fromarray(scene.image).save(buffer, format="JPEG", quality=90)
    return {"image": base64.b64encode(buffer.getvalue()).decode()}, len(buffer.getvalue())


def median(rows: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)


def measure(handler: TimedHandler, timed: TimedRunner, body: dict, count: int, repeats: int,
            warm_up: bool) -> dict[str, object]:
    """``repeats`` requests with ``count`` injected instances (after a warm-up one if asked)."""
    timed.instances = count
    rows: dict[str, list[tuple[float, float]]] = {key: [] for key in
                                                  ("total", "model", "predict", "serialise", "overhead")}
    for run in range(repeats + int(warm_up)):
        with Clock() as total:
            reply = handler.handle(body)
        if reply.status != 200:
            raise RuntimeError(f"the handler answered {reply.status}: {reply.body[:300]}")
        if warm_up and run == 0:
            continue
        model = timed.times[-1]
        rows["total"].append(total.pair)
        rows["model"].append(model)
        rows["predict"].append((handler.last["predict"][0] - model[0], handler.last["predict"][1] - model[1]))
        rows["serialise"].append(handler.last["serialise"])
        rows["overhead"].append((total.wall - model[0], total.cpu - model[1]))
    with Clock() as parse:
        items = json.loads(reply.body)
    sizes = [2 * (item["mask"][-2] - item["mask"][-4] + 1) * (item["mask"][-1] - item["mask"][-3] + 1)
             for item in items]
    return {"kept": len(items), "bytes": len(reply.body.encode()), "largest_item": max(sizes, default=0),
            "parse": parse.pair, "wrapper": nuclio_wrapper_encode(reply.body),
            **{key: median(values) for key, values in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino", "auto"))
    parser.add_argument("--config-file", default=str(CONFIG))
    parser.add_argument("--instances", type=int, nargs="+", default=[20, 40, 60])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    predictor = Predictor(load_config(args.config_file, ["MODEL.WEIGHTS", "", *args.opts]), backend=args.backend)
    timed = TimedRunner(predictor.runner, resized_shape(*FRAME, predictor.short_edge, predictor.max_size))
    predictor.runner = timed
    handler = TimedHandler(predictor)
    body, jpeg_size = frame_body()

    results = {count: measure(handler, timed, body, count, args.repeats, warm_up=index == 0)
               for index, count in enumerate(args.instances)}

    print(f"frame {FRAME[0]}x{FRAME[1]} JPEG {jpeg_size / 1024:.0f} KB, {Path(args.config_file).name}, backend "
          f"{timed.describe()}, torch threads {args.threads}, CPU {cpu_name()} "
          f"({os.cpu_count()} logical), median of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print("instances: injected barrier-shaped network outputs (rails/toeboards across the frame, posts)")
    columns = [("instances", "", 9), ("answer", "MB", 7), ("largest item", "MB", 12),
               ("serialise", "ms wall/CPU", 13), ("model", "s wall/CPU", 13), ("overhead", "s wall/CPU", 13),
               ("overhead", "% of wall", 9), ("post-proc", "s wall/CPU", 13), ("json.loads", "ms wall", 10),
               ("nuclio enc", "ms wall", 10)]
    print(" ".join(f"{name:>{width}}" for name, _, width in columns))
    print(" ".join(f"{unit:>{width}}" for _, unit, width in columns))
    for count, result in results.items():
        serialise, model, overhead, predict = (result[k] for k in ("serialise", "model", "overhead", "predict"))
        wrapper = result["wrapper"]
        cells = [f"{result['kept']}", f"{result['bytes'] / 1e6:.1f}", f"{result['largest_item'] / 1e6:.2f}",
                 f"{1000 * serialise[0]:.0f} / {1000 * serialise[1]:.0f}", f"{model[0]:.2f} / {model[1]:.2f}",
                 f"{overhead[0]:.3f} / {overhead[1]:.3f}", f"{100 * overhead[0] / model[0]:.1f}",
                 f"{predict[0]:.3f} / {predict[1]:.3f}", f"{1000 * result['parse'][0]:.0f}",
                 "n/a" if wrapper is None else f"{1000 * wrapper[0]:.0f}"]
        print(" ".join(f"{cell:>{width}}" for cell, (_, _, width) in zip(cells, columns, strict=True)))
        if result["kept"] != count:
            print(f"  (asked for {count} instances, {result['kept']} kept: overlapping masks or the model's top-k)")


if __name__ == "__main__":
    main()
