"""CPU inference paths side by side, for Swin-T and Swin-L: one table from one run.

Every variant runs in its own process (so peak RSS is its own; ``--interleaved``: all in one
process with their repeats interleaved, for a shared machine), on a 1080x1920 frame resized to
short side 800 (800x1422, padded to 800x1440), 2 threads, random weights. To give every path the
same work, 20 instances are kept (score threshold 0, top 20): random weights score nothing
above 0.5. Rows:

- upstream-equivalent: eager fp32, upstream's deformable sampling (all levels stacked), every
  query upsampled to the frame, then the top 20 kept;
- product torch fp32 / bf16 (autocast), product OpenVINO fp32 / bf16: threshold-first,
  windowed post-processing, the fused deformable-sampling kernel (``DEPLOY.FUSED_SAMPLING``);
- the same with ``-nokernel``: the PyTorch / OpenVINO-graph sampling (the kernel off), same run.

A table of the sampling alone (one encoder layer, s per layer: ``sampling_alone.py``) comes first.

Mask agreement is the mean IoU of each row's instances against product torch fp32. Cold start
is a fresh process from ``import`` to the first result (OpenVINO, ``auto`` precision, kernel on),
with an empty cache (conversion, compilation and the kernel's JIT) and with a warm one.

    python benchmarks/bench_cpu.py [--models tiny swin_t swin_l] [--repeats 3] [--variants ...] [--workdir DIR]
                                   [--no-sampling-table] [--no-cold-start] [--interleaved]
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

VARIANTS = ["upstream", "torch-fp32", "torch-fp32-nokernel", "torch-bf16", "torch-bf16-nokernel", "openvino-fp32",
            "openvino-fp32-nokernel", "openvino-bf16", "openvino-bf16-nokernel"]
KEPT = 20


def _opts(cache: str, kernel: bool = True) -> list[str]:
    return ["INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1440", "TEST.DETECTIONS_PER_IMAGE", str(KEPT),
            "DEPLOY.CACHE_DIR", cache, "DEPLOY.FUSED_SAMPLING", str(kernel)]


def _build_variant(model_name: str, variant: str, weights: str, cache: str):
    """One row's timed step ``once() -> (network s, post-processing s, masks, classes)`` and its
    runner's description; raises ValueError where the row cannot run here (e.g. no bf16)."""
    import contextlib

    from mask2former.config import load_config
    from mask2former.modeling.pixel_decoder import ms_deform_attn
    from mask2former.postprocess import ResizeGeometry, instances_from_outputs, reference_instances
    from mask2former.predictor import Predictor

    image = benchmark_frame()
    backend, _, precision = variant.removesuffix("-nokernel").partition("-")
    kernel = not variant.endswith("-nokernel") and variant != "upstream"
    cfg = load_config(CONFIGS[model_name], _opts(cache, kernel))
    if variant == "upstream":
        backend, precision = "torch", "fp32"
    predictor = Predictor(cfg, weights=weights, backend=backend, precision=precision, score_threshold=0.0)
    runner = predictor.runner

    @contextlib.contextmanager
    def sampling():
        """upstream's stacked sampling for that row only (rows may share a process)"""
        product = ms_deform_attn.deformable_sample
        if variant == "upstream":
            ms_deform_attn.deformable_sample = upstream_deformable_sample
        try:
            yield
        finally:
            ms_deform_attn.deformable_sample = product

    def network_input():
        return predictor.network_input([image])

    def once():
        start = time.perf_counter()
        batch, sizes = network_input()
        with sampling():
            logits, masks = runner(batch)
        network = time.perf_counter()
        geometry = ResizeGeometry(sizes[0], tuple(batch.shape[-2:]), image.shape[:2])
        if variant == "upstream":
            result = reference_instances(logits[0], masks[0], geometry, top_k=100)
            order = result["scores"].argsort(descending=True)[:KEPT]
            out_masks, out_classes = result["pred_masks"][order].numpy(), result["pred_classes"][order].numpy()
        else:
            instances = instances_from_outputs(logits[0], masks[0], geometry, predictor.class_names,
                                               score_threshold=0.0, top_k=KEPT)
            out_masks, out_classes = instances.masks, instances.class_ids
        done = time.perf_counter()
        return network - start, done - network, out_masks, out_classes

    return once, runner.describe()


def _summary(variant: str, timings: list, description: str) -> dict:
    return {"variant": variant, "total": statistics.median(t[0] + t[1] for t in timings),
            "network": statistics.median(t[0] for t in timings), "post": statistics.median(t[1] for t in timings),
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "masks": timings[-1][2],
            "classes": timings[-1][3], "description": description}


def run_variant(model_name: str, variant: str, weights: str, cache: str, repeats: int, queue: mp.Queue) -> None:
    """One row in its own process (its peak RSS is its own)."""
    import torch

    torch.set_num_threads(2)
    try:
        once, description = _build_variant(model_name, variant, weights, cache)
    except ValueError as error:
        queue.put({"variant": variant, "error": str(error)})
        return
    once()  # warm-up: compilation, allocator
    queue.put(_summary(variant, [once() for _ in range(repeats)], description))


def run_interleaved(model_name: str, variants: list[str], weights: str, cache: str, repeats: int,
                    queue: mp.Queue) -> None:
    """All rows in one process, their repeats interleaved: on a shared, noisy machine the ratios
    between rows hold (every row sees the same load); peak RSS is then the whole process's."""
    import torch

    torch.set_num_threads(2)
    built, results = {}, {}
    for variant in variants:
        try:
            built[variant] = _build_variant(model_name, variant, weights, cache)
        except ValueError as error:
            results[variant] = {"variant": variant, "error": str(error)}
    for once, _ in built.values():
        once()  # warm-up
    timings: dict[str, list] = {variant: [] for variant in built}
    for _ in range(repeats):
        for variant, (once, _) in built.items():
            timings[variant].append(once())
    results.update({v: _summary(v, timings[v], built[v][1]) for v in built})
    queue.put(results)


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
    env = {**os.environ, "OMP_NUM_THREADS": "2", "NUMBA_CACHE_DIR": str(Path(cache) / "numba-kernels")}
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


def bench_model(model_name: str, repeats: int, workdir: Path, variants: list[str],
                interleaved: bool = False, cold_start: bool = True) -> list[str]:
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
    if interleaved:
        results = _spawn(run_interleaved, model_name, variants, str(weights), cache, repeats)
        results = {v: results.get(v, {"error": results.get("error", "missing")}) for v in variants}
    else:
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
        speedup = f"{upstream_total / r['total']:.1f}x" if upstream_total else "-"  # no upstream row
        rss = "-" if interleaved else f"{r['rss']:.2f}"  # one process for every row: its peak is nobody's own
        rows.append(f"| {model_name} | {variant} | {r['total']:.2f} | {r['network']:.2f} | {r['post']:.2f} | "
                    f"{speedup} | {rss} | {agreement:.3f}{'' if same_classes else ' (classes differ)'} |")
    for variant in variants:  # the kernel's own effect: the same backend and precision with it off
        on, off = results[variant], results.get(f"{variant}-nokernel", {})
        if "total" in on and "total" in off:
            rows.append(f"| {model_name} | {variant}: kernel on vs off | {off['total'] / on['total']:.2f}x | "
                        f"{off['network'] / on['network']:.2f}x | | | | |")
    if not cold_start:
        return rows
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
    parser.add_argument("--no-sampling-table", action="store_true", help="skip the sampling-alone table")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold-start rows")
    parser.add_argument("--interleaved", action="store_true",
                        help="all rows of a model in one process, repeats interleaved (a shared, noisy machine: "
                             "ratios hold, peak RSS is the process's)")
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
    if not args.no_sampling_table:
        sampling = _spawn(_sampling_rows, args.repeats)
        table = sampling.get("rows", [f"| n/a: {sampling.get('error')} | | | |"])
        print("The deformable sampling alone, one encoder layer at Swin-T 1080p shapes, 2 threads "
              f"(sampling_alone.py, median of {args.repeats}):\n\n| inputs | path | s per layer | vs torch eager |\n"
              "|---|---|---|---|\n" + "\n".join(table) + "\n", flush=True)
    rows = []
    for model_name in args.models:
        rows.extend(bench_model(model_name, args.repeats, workdir, variants, args.interleaved, not args.no_cold_start))
    print("\n".join(header + rows))


def _sampling_rows(repeats: int, queue: mp.Queue) -> None:
    from sampling_alone import measure

    queue.put({"rows": measure(repeats)})


if __name__ == "__main__":
    main()
