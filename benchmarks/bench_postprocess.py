"""Post-processing benchmark: upstream's path (upsample every query, then filter) vs the product's.

Swin-T safetybarrier geometry: a 1080x1920 frame resized to short side 800 (800x1422, padded to
800x1440), 100 queries, 4 classes, mask logits at 1/4 resolution. ``--kept`` queries get a
confident class and a bar-shaped mask (what barrier instances look like); the rest get low class
scores. Each variant runs in its own process so peak RSS is its own. Prints one table, with the
median and the slowest repeat (steadiness). A third row runs the product's path on two torch
intra-op threads, as it did before it was pinned to one: every small operation then waits at a
barrier whenever the other core is busy, which made its time swing between runs.

    python benchmarks/bench_postprocess.py [--repeats 5] [--kept 20] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import cv2
import numpy as np
import torch

FRAME = (1080, 1920)
INPUT = (800, 1422)
PADDED = (800, 1440)
QUERIES, CLASSES = 100, 4


def synthetic_outputs(kept: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits and smooth bar-shaped mask logits; ``kept`` queries are confident."""
    rng = np.random.default_rng(seed)
    low_h, low_w = PADDED[0] // 4, PADDED[1] // 4
    masks = np.empty((QUERIES, low_h, low_w), np.float32)
    for q in range(QUERIES):
        canvas = np.zeros((low_h, low_w), np.float32)
        center = (float(rng.uniform(0, INPUT[1] / 4)), float(rng.uniform(0, INPUT[0] / 4)))
        size = (float(rng.uniform(20, 300)), float(rng.uniform(2, 12)))
        box = cv2.boxPoints((center, size, float(rng.uniform(-80, 80))))
        cv2.fillPoly(canvas, [box.astype(np.int32)], 1.0)
        masks[q] = cv2.GaussianBlur(canvas, (0, 0), 1.5) * 16 - 8
    logits = rng.normal(0, 1, (QUERIES, CLASSES + 1)).astype(np.float32)
    logits[:, -1] += 3.0  # most queries: "no object"
    confident = rng.choice(QUERIES, kept, replace=False)
    logits[confident, rng.integers(0, CLASSES, kept)] += 9.0
    return torch.from_numpy(logits), torch.from_numpy(masks)


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(name: str, kept: int, threshold: float, repeats: int, queue: mp.Queue) -> None:
    torch.set_num_threads(2)
    from mask2former.postprocess import ResizeGeometry, instances_from_outputs, reference_instances

    class_logits, mask_logits = synthetic_outputs(kept)
    geometry = ResizeGeometry(INPUT, PADDED, FRAME)
    baseline = _rss_mb()

    def once():
        if name == "product-2-threads":  # the product's steps, without the one-thread guard
            from mask2former.postprocess import _instances

            result = _instances(class_logits, mask_logits, geometry, ["a", "b", "c", "d"], threshold, QUERIES)
            return result.scores, result.masks
        if name == "upstream":
            result = reference_instances(class_logits, mask_logits, geometry, top_k=QUERIES)
            keep = result["scores"] >= threshold
            order = result["scores"][keep].argsort(descending=True)
            return (result["scores"][keep][order].numpy(), result["pred_masks"][keep][order].numpy())
        result = instances_from_outputs(class_logits, mask_logits, geometry, ["a", "b", "c", "d"],
                                        score_threshold=threshold, top_k=QUERIES)
        return result.scores, result.masks

    once()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores, masks = once()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, statistics.median(times), peak, peak - baseline, scores, masks, max(times)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kept", type=int, default=20)
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    results = {}
    for name in ("upstream", "product", "product-2-threads"):
        queue = context.Queue()
        process = context.Process(target=run_variant, args=(name, args.kept, args.threshold, args.repeats, queue))
        process.start()
        while process.is_alive() and queue.empty():
            process.join(timeout=1)
        if queue.empty():
            raise SystemExit(f"variant {name} failed (exit code {process.exitcode})")
        results[name] = queue.get()
        process.join()
    _, up_time, up_peak, up_delta, up_scores, up_masks, up_max = results["upstream"]
    _, pr_time, pr_peak, pr_delta, pr_scores, pr_masks, pr_max = results["product"]
    _, two_time, two_peak, two_delta, two_scores, _, two_max = results["product-2-threads"]
    identical = up_masks.shape == pr_masks.shape and bool((up_masks == pr_masks).all())
    differing = int((up_masks != pr_masks).sum()) if up_masks.shape == pr_masks.shape else -1
    print(f"frame {FRAME[0]}x{FRAME[1]} -> input {INPUT[0]}x{INPUT[1]} (padded {PADDED[0]}x{PADDED[1]}), "
          f"{QUERIES} queries, threshold {args.threshold}, torch threads 2, median of {args.repeats}")
    print(f"{'path':<38}{'s/img':>8}{'slowest':>9}{'peak RSS MB':>13}{'RSS added MB':>14}{'kept':>6}")
    for label, median, slowest, peak, delta, kept in (
        ("upstream (all queries upsampled)", up_time, up_max, up_peak, up_delta, len(up_scores)),
        ("product (threshold first, windows)", pr_time, pr_max, pr_peak, pr_delta, len(pr_scores)),
        ("product on 2 intra-op threads (before)", two_time, two_max, two_peak, two_delta, len(two_scores)),
    ):
        print(f"{label:<38}{median:8.3f}{slowest:9.3f}{peak:13.0f}{delta:14.0f}{kept:6d}")
    print(f"speed-up {up_time / pr_time:.1f}x; kept masks identical: {identical} "
          f"(differing pixels {differing}); max score difference "
          f"{np.abs(up_scores - pr_scores).max() if len(up_scores) == len(pr_scores) and len(up_scores) else 0:.2e}")


if __name__ == "__main__":
    main()
