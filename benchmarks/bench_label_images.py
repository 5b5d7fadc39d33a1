"""Batch labelling throughput: the full ``barrier-label`` path against the bare predictor.

Both run in one process on the same synthetic images with the same predictor, alternately
(``--repeats`` rounds; median and best reported, and CPU seconds of the whole process), so load
from other processes hits both alike:

- bare: decode each image (``read_image``) and call ``predict_batch`` per ``--batch-size`` images;
- labelling: ``label_folder`` with ``--overwrite`` semantics on a CVAT export of the same images
  (XML load, prefetching loader, prediction records, overlays, atomic writes, final XML save).

Target: labelling reaches at least 0.9 of the bare predictor's images/s at batch 4.

    python benchmarks/bench_label_images.py [--images 24] [--size 320] [--repeats 3]
        [--config-file configs/.../maskformer2_swin_tiny_bs16_50ep.yaml --weights W]

The default is the tiny config, first fitted for ``--fit-steps`` steps on a few synthetic scenes
so that it predicts what a barrier model predicts (a handful of thin masks per image). With
``--fit-steps 0`` it stays random: about 17 instances per image at threshold 0.2, each covering
most of the frame with ragged edges, the worst case for encoding and drawing.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from barrier_annotator.labelling import LabelOptions, label_folder, model_identity
from barrier_annotator.training.data.synthetic import generate_dataset
from barrier_annotator.training.quick_fit import overfit_tiny_model
from mask2former.config import load_config
from mask2former.io import read_image
from mask2former.predictor import Predictor

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs/safetybarrier/instance-segmentation/swin/tiny_cpu.yaml"


def make_export(root: Path, count: int, size: int) -> Path:
    """A CVAT-export-like folder: ``images/`` and ``annotations.xml`` (synthetic human masks)."""
    paths = generate_dataset(root / "synthetic", num_train=count, num_val=0, image_size=size,
                             write_cvat_xml=True, progress=False)
    export = root / "export"
    shutil.copytree(paths.images["train"], export / "images")
    shutil.copyfile(paths.cvat_xml["train"], export / "annotations.xml")
    return export


def bare(predictor: Predictor, files: list[Path], batch_size: int) -> int:
    instances = 0
    for start in range(0, len(files), batch_size):
        images = [read_image(path) for path in files[start:start + batch_size]]
        instances += sum(len(result) for result in predictor.predict_batch(images))
    return instances


def labelling(predictor: Predictor, export: Path, output: Path, args: argparse.Namespace, identity: dict) -> int:
    summary = label_folder(predictor, LabelOptions(
        input_dir=export, output_dir=output, batch_size=args.batch_size, workers=args.workers,
        polygons=args.polygons, overwrite=True, progress=False, model=identity))
    if summary.predicted != args.images:
        raise SystemExit(f"labelling predicted {summary.predicted} of {args.images} images")
    return summary.shapes.total() + summary.not_written.total()


def timed(run, *args) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds of the whole process (every thread) and the run's result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=str(TINY_CONFIG))
    parser.add_argument("--weights", default=None, help="default: MODEL.WEIGHTS (random init for the tiny config)")
    parser.add_argument("--fit-steps", type=int, default=60,
                        help="without --weights: fit the model this many steps first (0: random weights)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="default: the config's, or 0.2 for random weights")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=320, help="synthetic image size (long side), px")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--polygons", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config_file, args.opts)
    weights = args.weights if args.weights is not None else cfg.MODEL.WEIGHTS
    model, weights_note = None, weights
    if not weights:
        started = time.perf_counter()
        model = overfit_tiny_model(cfg, steps=args.fit_steps)
        weights_note = (f"fitted {args.fit_steps} steps ({time.perf_counter() - started:.0f} s)"
                        if args.fit_steps else "random weights")
    random_weights = not weights and not args.fit_steps
    threshold = args.threshold if args.threshold is not None else (0.2 if random_weights else None)
    predictor = Predictor(cfg, weights=weights or None, model=model, device=args.device, backend=args.backend,
                          score_threshold=threshold)
    identity = model_identity(cfg, weights or weights_note)

    with tempfile.TemporaryDirectory(prefix="bench-label-") as tmp:
        root = Path(tmp)
        export = make_export(root, args.images, args.size)
        files = sorted((export / "images").glob("*.jpg"))
        bare(predictor, files[: args.batch_size], args.batch_size)  # warm-up (lazy model, allocator)
        runs: dict[str, list[float]] = {"bare": [], "labelling": []}
        cpu: dict[str, list[float]] = {"bare": [], "labelling": []}
        counts = {}
        for round_ in range(args.repeats):
            for name, call, call_args in (
                ("bare", bare, (predictor, files, args.batch_size)),
                ("labelling", labelling, (predictor, export, root / f"out{round_}", args, identity)),
            ):
                wall, seconds, counts[name] = timed(call, *call_args)
                runs[name].append(wall)
                cpu[name].append(seconds)

    rates = {name: args.images / statistics.median(times) for name, times in runs.items()}
    best = {name: args.images / min(times) for name, times in runs.items()}
    print(f"{args.images} synthetic images (long side {args.size} px), config {Path(args.config_file).name} "
          f"({weights_note}), "
          f"{predictor.backend_description}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"loader workers {args.workers}, threshold {predictor.score_threshold:.2f}, "
          f"{'polygons' if args.polygons else 'masks'}, median of {args.repeats}")
    print(f"{'path':<12}{'images/s':>10}{'best':>8}{'s/image':>10}{'CPU s/image':>13}{'instances':>11}   runs (s)")
    for name, times in runs.items():
        print(f"{name:<12}{rates[name]:10.2f}{best[name]:8.2f}{1 / rates[name]:10.3f}"
              f"{statistics.median(cpu[name]) / args.images:13.3f}{counts[name]:11d}   "
              + " ".join(f"{t:.2f}" for t in times))
    ratio = rates["labelling"] / rates["bare"]
    print(f"labelling / bare images/s: {ratio:.3f} median, {best['labelling'] / best['bare']:.3f} best "
          f"(target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'}); CPU per image "
          f"{statistics.median(cpu['labelling']) / statistics.median(cpu['bare']):.3f}x the bare predictor's")


if __name__ == "__main__":
    main()
