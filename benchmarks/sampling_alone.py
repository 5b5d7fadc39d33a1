"""The deformable sampling alone, one encoder layer at Swin-T's 1080p shapes: s per layer.

Levels 100x180, 50x90, 25x45 (a 1080x1920 frame at 800x1440), 8 heads x 32 channels, 3 levels x
4 points, 23,625 queries, batch 1, 2 threads. Paths: ``deformable_sample`` in torch eager, the
same function exported alone to OpenVINO (fp32, and bf16 where the CPU has it), and the fused
kernel. Inputs: the encoder's own reference points (cell centres) with the offsets and attention
weights of a freshly initialised layer (rings of 1-4 px, uniform weights), then the same offsets
plus N(0, 2 px) noise per query (neighbouring queries no longer share corners), then random
reference points (as in the issue's first measurement). Repeats are interleaved, medians printed.

    python benchmarks/sampling_alone.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = [(100, 180), (50, 90), (25, 45)]
HEADS, HEAD_DIM, POINTS = 8, 32, 4


def layer_inputs(case: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(value, reference_points, offsets, weights)`` for one case (see the module docstring)."""
    from mask2former.modeling.pixel_decoder.ms_deform_attn import MSDeformAttn
    from mask2former.modeling.pixel_decoder.msdeformattn import reference_points_for

    generator = torch.Generator().manual_seed(seed)
    rows = sum(h * w for h, w in SHAPES)
    layer = MSDeformAttn(HEADS * HEAD_DIM, len(SHAPES), HEADS, POINTS)
    value = torch.randn(1, rows, HEADS, HEAD_DIM, generator=generator)
    reference = reference_points_for(SHAPES, torch.device("cpu"))
    offsets = layer.sampling_offsets.bias.detach().view(1, 1, HEADS, len(SHAPES), POINTS, 2).expand(
        1, rows, -1, -1, -1, -1).contiguous()
    weights = torch.full((1, rows, HEADS, len(SHAPES), POINTS), 1.0 / (len(SHAPES) * POINTS))
    if case == "noisy offsets":
        offsets = offsets + 2 * torch.randn(offsets.shape, generator=generator)
    elif case == "random reference points":
        reference = torch.rand(reference.shape, generator=generator)
    return value, reference, offsets, weights


def _openvino_alone(inputs: tuple[torch.Tensor, ...], precision: str):
    """``deformable_sample`` converted and compiled on its own; None where the precision is missing."""
    from mask2former.backends.openvino_backend import _PRECISION_HINTS, shared_core
    from mask2former.backends.openvino_runtime import import_openvino
    from mask2former.modeling.pixel_decoder.ms_deform_attn import deformable_sample

    ov = import_openvino()
    core = shared_core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return None

    class Sampling(torch.nn.Module):
        def forward(self, value, reference, offsets, weights):
            return deformable_sample(value, SHAPES, reference, offsets, weights)

    with torch.no_grad():
        converted = ov.convert_model(Sampling(), example_input=inputs)
    compiled = core.compile_model(converted, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2,
                                                     "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision]})
    request = compiled.create_infer_request()
    arrays = [t.numpy() for t in inputs]
    return lambda: request.infer(arrays)


def measure(repeats: int) -> list[str]:
    """Markdown rows ``| case | path | s per layer | vs torch eager |``."""
    torch.set_num_threads(2)
    from mask2former.modeling.pixel_decoder.fused_sampling import fused_deformable_sample, warm_up
    from mask2former.modeling.pixel_decoder.ms_deform_attn import deformable_sample

    warm_up()
    rows = []
    for case in ("init offsets (the model's grid)", "noisy offsets", "random reference points"):
        inputs = layer_inputs(case)
        value, reference, offsets, weights = inputs
        paths = {
            "deformable_sample, torch eager fp32": lambda a=inputs: deformable_sample(a[0], SHAPES, *a[1:]),
            "deformable_sample alone in OpenVINO fp32": _openvino_alone(inputs, "fp32"),
            "deformable_sample alone in OpenVINO bf16": _openvino_alone(inputs, "bf16"),
            "fused kernel (fp32)": lambda a=inputs: fused_deformable_sample(a[0], SHAPES, *a[1:]),
        }
        paths = {name: run for name, run in paths.items() if run is not None}
        expected = deformable_sample(value, SHAPES, reference, offsets, weights)
        error = (fused_deformable_sample(value, SHAPES, reference, offsets, weights) - expected).abs().max().item()
        times: dict[str, list[float]] = {name: [] for name in paths}
        with torch.no_grad():
            for run in paths.values():
                run()  # warm-up
            for _ in range(repeats):
                for name, run in paths.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
        eager = statistics.median(times["deformable_sample, torch eager fp32"])
        for name, samples in times.items():
            median = statistics.median(samples)
            note = f" (max abs diff vs torch {error:.1e})" if name.startswith("fused") else ""
            rows.append(f"| {case} | {name}{note} | {median:.4f} | {eager / median:.1f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| inputs | path | s per layer | vs torch eager |\n|---|---|---|---|")
    print("\n".join(measure(args.repeats)))


if __name__ == "__main__":
    main()
