"""Where OpenVINO spends the time: per layer type and per model part, before and after.

"before" converts the network with the product's graph sampling (per-level GridSample
accumulation); "after" with the fused kernel as one custom operation per encoder layer (its
time shows under the plugin's node type for operations it runs through ``evaluate``).
``--with-upstream`` adds upstream's sampling (all levels and points stacked, then reduced).
One static padded size (default 800x1440), 2 threads, OpenVINO's per-node performance counters.

    python benchmarks/profile_openvino.py [--config swin_t] [--size 800x1440] [--precision auto] [--with-upstream]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from model_configs import CONFIGS
from upstream_sampling import upstream_deformable_sample

PARTS = ("backbone", "pixel_decoder", "predictor")


def _part(name: str) -> str:
    for part in PARTS:
        if part in name:
            return part
    return "other"


def profile(model, size: tuple[int, int], precision: str, repeats: int,
            fused: bool = False) -> tuple[float, dict, dict]:
    from mask2former.backends.openvino_backend import (
        _PRECISION_HINTS,
        convert_network,
        resolve_openvino_precision,
        shared_core,
    )

    core = shared_core()  # knows the fused operation
    converted = convert_network(model, example_size=size, fused_sampling=fused)  # upstream's freezes shapes
    converted.reshape({converted.inputs[0]: [1, 3, *size]})
    hint = _PRECISION_HINTS[resolve_openvino_precision(precision, core)]
    compiled = core.compile_model(converted, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2,
                                                     "INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    data = torch.randn(1, 3, *size).numpy()
    request.infer({0: data})
    times, by_type, by_part = [], collections.Counter(), collections.Counter()
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer({0: data})
        times.append(time.perf_counter() - start)
        for node in request.get_profiling_info():
            seconds = node.real_time.total_seconds()
            by_type[node.node_type] += seconds / repeats
            by_part[_part(node.node_name)] += seconds / repeats
    return statistics.median(times), by_type, by_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="swin_t", choices=sorted(CONFIGS))
    parser.add_argument("--size", default="800x1440")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-upstream", action="store_true", help="also profile upstream's stacked sampling")
    args = parser.parse_args()
    torch.set_num_threads(2)
    size = tuple(int(v) for v in args.size.split("x"))

    from mask2former.config import load_config
    from mask2former.config.build import build_model
    from mask2former.modeling.pixel_decoder import ms_deform_attn

    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS[args.config], ["MODEL.WEIGHTS", ""])).eval()
    product_sampling = ms_deform_attn.deformable_sample
    runs = [("upstream (stack all levels)", upstream_deformable_sample, False)] if args.with_upstream else []
    runs += [("before: graph sampling (GridSample per level)", product_sampling, False),
             ("after: fused kernel (one operation per layer)", product_sampling, True)]
    results = {}
    for label, sampler, fused in runs:
        ms_deform_attn.deformable_sample = sampler
        results[label] = profile(model, size, args.precision, args.repeats, fused=fused)
    ms_deform_attn.deformable_sample = product_sampling

    print(f"{args.config} at {size[0]}x{size[1]}, OpenVINO {args.precision}, 2 threads, median of {args.repeats}")
    for label, (seconds, by_type, by_part) in results.items():
        total = sum(by_part.values())
        print(f"\n{label}: {seconds:.2f} s/img")
        print("  share by model part: " + ", ".join(
            f"{part} {100 * by_part[part] / total:.0f}%" for part in (*PARTS, "other")))
        print("  top layer types: " + ", ".join(
            f"{kind} {100 * t / total:.0f}%" for kind, t in by_type.most_common(8)))


if __name__ == "__main__":
    main()
