"""CPU inference paths side by side, for Swin-T and Swin-L: one table from one run.

Every variant runs in its own process (so peak RSS is its own), on a 1080x1920 frame resized to
short side 800 (800x1422, padded to 800x1440), 2 threads, random weights. To give every path the
same work, 20 instances are kept (score threshold 0, top 20): random weights score nothing
above 0.5. Rows:

- upstream-equivalent: eager fp32, upstream's deformable sampling (all levels stacked), every
  query upsampled to the frame, then the top 20 kept;
- product torch fp32 / bf16 (autocast), product OpenVINO fp32 / bf16: threshold-first,
  windowed post-processing.

Mask agreement is the mean IoU of each row's instances against product torch fp32. Cold start
is a fresh process from ``import`` to the first result, with an empty and with a warm cache.

    python benchmarks/bench_cpu.py [--models tiny swin_t swin_l] [--repeats 3] [--variants ...] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from model_configs import CONFIGS, FRAME, benchmark_frame
from upstream_sampling import upstream_deformable_sample

VARIANTS = ["upstream", "torch-fp32", "torch-bf16", "openvino-fp32", "openvino-bf16"]
KEPT = 20


def _opts(cache: str) -> list[str]:
    return ["INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1440", "TEST.DETECTIONS_PER_IMAGE", str(KEPT),
            "DEPLOY.CACHE_DIR", cache]


def run_variant(model_name: str, variant: str, weights: str, cache: str, repeats: int, queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(2)
    from mask2former.backends import NetworkRunner
    from mask2former.config import load_config
    from mask2former.modeling.pixel_decoder import ms_deform_attn
    from mask2former.postprocess import ResizeGeometry, reference_instances
    from mask2former.predictor import Predictor
    from mask2former.preprocess import normalize_and_pad, resize_image, resized_shape

    image = benchmark_frame()
    cfg = load_config(CONFIGS[model_name], _opts(cache))
    backend, _, precision = variant.partition("-")
    if variant == "upstream":
        backend, precision = "torch", "fp32"
        ms_deform_attn.deformable_sample = upstream_deformable_sample
    try:
        predictor = Predictor(cfg, weights=weights, backend=backend, precision=precision, score_threshold=0.0)
    except ValueError as error:
        queue.put({"variant": variant, "error": str(error)})
        return
    runner: NetworkRunner = predictor.runner

    def network_input():
        size = resized_shape(*image.shape[:2], predictor.short_edge, predictor.max_size)
        tensor = torch.from_numpy(resize_image(image, size).transpose(2, 0, 1).copy()).float()
        return normalize_and_pad([tensor], predictor.pixel_mean, predictor.pixel_std, predictor.size_divisibility)

    def once():
        start = time.perf_counter()
        batch, sizes = network_input()
        logits, masks = runner(batch)
        network = time.perf_counter()
        geometry = ResizeGeometry(sizes[0], tuple(batch.shape[-2:]), image.shape[:2])
        if variant == "upstream":
            result = reference_instances(logits[0], masks[0], geometry, top_k=100)
            order = result["scores"].argsort(descending=True)[:KEPT]
            out_masks, out_classes = result["pred_masks"][order].numpy(), result["pred_classes"][order].numpy()
        else:
            from mask2former.postprocess import instances_from_outputs

            instances = instances_from_outputs(logits[0], masks[0], geometry, predictor.class_names,
                                               score_threshold=0.0, top_k=KEPT)
            out_masks, out_classes = instances.masks, instances.class_ids
        done = time.perf_counter()
        return network - start, done - network, out_masks, out_classes

    once()  # warm-up: compilation, allocator
    timings = [once() for _ in range(repeats)]
    net = statistics.median(t[0] for t in timings)
    post = statistics.median(t[1] for t in timings)
    total = statistics.median(t[0] + t[1] for t in timings)
    queue.put({"variant": variant, "total": total, "network": net, "post": post,
               "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "masks": timings[-1][2],
               "classes": timings[-1][3], "description": runner.describe()})


def _cold_start(model_name: str, weights: str, cache: str) -> float:
    code = (
        "import time; start = time.perf_counter()\n"
        "from mask2former.config import load_config; from mask2former.predictor import Predictor\n"
        "import numpy as np\n"
        f"cfg = load_config({str(CONFIGS[model_name])!r}, {_opts(cache)!r})\n"
        f"p = Predictor(cfg, weights={weights!r}, backend='openvino', precision='auto', score_threshold=0.5)\n"
        f"p(np.zeros(({FRAME[0]}, {FRAME[1]}, 3), np.uint8))\n"
        "print(time.perf_counter() - start)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return float(result.stdout.strip().splitlines()[-1])


def _spawn(target, *args):
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while process.is_alive() and queue.empty():
        process.join(timeout=1)
    if queue.empty():
        return {"error": f"crashed (exit code {process.exitcode})"}
    result = queue.get()
    process.join()
    return result


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def bench_model(model_name: str, repeats: int, workdir: Path, variants: list[str]) -> list[str]:
    import torch

    from mask2former.config import load_config
    from mask2former.config.build import build_model

    torch.manual_seed(0)
    weights = workdir / f"{model_name}_random.pth"
    if not weights.exists():
        model = build_model(load_config(CONFIGS[model_name], ["MODEL.WEIGHTS", ""]))
        torch.save({"model": model.state_dict()}, weights)
        del model
    cache = str(workdir / f"cache_{model_name}")
    results = {v: _spawn(run_variant, model_name, v, str(weights), cache, repeats) for v in variants}
    reference = results["torch-fp32"]
    upstream_total = results.get("upstream", {}).get("total")
    rows = []
    for variant in variants:
        r = results[variant]
        if "error" in r:
            rows.append(f"| {model_name} | {variant} | n/a: {r['error'][:80]} | | | | | |")
            continue
        agreement = np.mean([_iou(a, b) for a, b in zip(r["masks"], reference["masks"], strict=False)])
        same_classes = np.array_equal(r["classes"], reference["classes"])
        speedup = upstream_total / r["total"] if upstream_total else float("nan")
        rows.append(f"| {model_name} | {variant} | {r['total']:.2f} | {r['network']:.2f} | {r['post']:.2f} | "
                    f"{speedup:.1f}x | {r['rss']:.2f} | {agreement:.3f}{'' if same_classes else ' (classes differ)'} |")
    cache_dir = Path(cache)
    for entry in cache_dir.glob("*"):
        if entry.is_dir():
            import shutil

            shutil.rmtree(entry)
    cold = _cold_start(model_name, str(weights), cache)
    warm = _cold_start(model_name, str(weights), cache)
    rows.append(f"| {model_name} | openvino cold start | empty cache {cold:.1f} s, warm cache {warm:.1f} s | | | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["swin_t", "swin_l"], choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="keeps random weights between runs")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS,
                        help="rows to run (torch-fp32 is always run: it is the agreement reference); bf16 "
                             "without AVX512-BF16/AMX is emulated and very slow")
    args = parser.parse_args()
    variants = [v for v in VARIANTS if v in args.variants or v == "torch-fp32"]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-cpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import openvino as ov

    header = [
        f"frame {FRAME[0]}x{FRAME[1]} -> 800x1422 (padded 800x1440), {KEPT} kept instances, 2 threads, "
        f"median of {args.repeats}; CPU: {ov.Core().get_property('CPU', 'FULL_DEVICE_NAME')}, "
        f"OpenVINO capabilities {ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')}",
        "",
        "| model | path | end-to-end s/img | network s | post-processing s | speed-up | peak RSS GB | "
        "mask IoU vs torch fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for model_name in args.models:
        rows.extend(bench_model(model_name, args.repeats, workdir, variants))
    print("\n".join(header + rows))


if __name__ == "__main__":
    main()
