"""Overlay drawing cost: ms per 1080p overlay with 20-60 prediction-like instances.

barrier-label draws one overlay per image on a background thread, so drawing must stay cheap
beside the model. Frames come from the synthetic generator (a 1080x1920 site); the instances are
its ground-truth masks plus shifted, dilated copies with lower scores (what a model's duplicates
look like) until ``N`` instances. Prints the median and the slowest of ``--repeats`` per count,
and one 8000x6000 (48 Mpx) frame with the memory drawing it takes.

    python benchmarks/bench_visualize.py [--repeats 7] [--counts 20 40 60]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import cv2
import numpy as np

from barrier_annotator.training.data.synthetic import CLASS_NAMES, render_scene
from barrier_annotator.visualize import draw_instances
from mask2former.structures import Instances


def prediction_like(seed: int, height: int, width: int, count: int) -> tuple[np.ndarray, Instances]:
    """A rendered site and ``count`` instances: its true masks, then jittered copies of them."""
    scene = render_scene(np.random.default_rng(seed), height, width)
    rng = np.random.default_rng(seed + 1)
    masks, classes = [], []
    while len(masks) < count:
        for part in scene.instances:
            if len(masks) == count:
                break
            mask = part.mask
            if len(masks) >= len(scene.instances):  # a duplicate: shifted and grown a little
                dx, dy = (int(v) for v in rng.integers(-width // 60, width // 60 + 1, size=2))
                mask = cv2.warpAffine(mask.view(np.uint8), np.float32([[1, 0, dx], [0, 1, dy]]), (width, height),
                                      flags=cv2.INTER_NEAREST).view(bool)
                mask = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            masks.append(mask)
            classes.append(part.class_id)
    scores = np.sort(rng.uniform(0.4, 0.99, size=count))[::-1]
    return scene.image, Instances.from_masks(np.stack(masks), scores, np.array(classes), CLASS_NAMES)


def upscaled(image: np.ndarray, instances: Instances, size: tuple[int, int]) -> tuple[np.ndarray, Instances]:
    """The same site at ``size`` (height, width): a 48 Mpx frame without rendering one."""
    height, width = size
    masks = np.stack([cv2.resize(m.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).view(bool)
                      for m in instances.masks])
    big = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return big, Instances.from_masks(masks, instances.scores, instances.class_ids, instances.class_names)


def _time(image: np.ndarray, instances: Instances, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        draw_instances(image, instances)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--counts", type=int, nargs="+", default=[20, 40, 60])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # the labelling thread shares the machine with the model
    print("| frame | instances | median ms | slowest ms |")
    print("|---|---|---|---|")
    for count in args.counts:
        image, instances = prediction_like(args.seed, 1080, 1920, count)
        draw_instances(image, instances)  # warm-up (fonts, caches)
        times = _time(image, instances, args.repeats)
        print(f"| 1080x1920 | {count} | {1000 * statistics.median(times):.1f} | {1000 * max(times):.1f} |")
    image, instances = upscaled(*prediction_like(args.seed, 1080, 1920, 8), (6000, 8000))
    tracemalloc.start()  # numpy and OpenCV arrays allocate through it
    times = _time(image, instances, 1)
    peak = tracemalloc.get_traced_memory()[1] / 1024 ** 2
    tracemalloc.stop()
    print(f"| 6000x8000 | 8 | {1000 * times[0]:.1f} | - |")
    print(f"48 Mpx: drawing allocated at most {peak:.0f} MB at once (the frame itself is "
          f"{image.nbytes / 1024 ** 2:.0f} MB)")


if __name__ == "__main__":
    main()
