"""The whole product in one command, on CPU, with no weights and no network: ``barrier-demo``.

1. generates a small synthetic construction site (guardrails with top rails, mid rails,
   toeboards and posts) as a COCO training/validation set,
2. trains the tiny Mask2Former (``tiny_cpu.yaml``) from scratch for a fixed time budget,
   evaluating COCO mask AP on the validation images,
3. pre-labels a held-out folder laid out like a CVAT task export (``images/`` and an
   ``annotations.xml`` without shapes), exactly as ``barrier-label`` does: a CVAT 1.1 XML with
   ``<mask>`` shapes to upload into CVAT, plus one overlay picture per image.

Everything lands under ``--output`` (default ``./demo_output``); the closing lines print where,
the AP reached and the commands to do the same with real images and weights.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
from fvcore.common.config import CfgNode

from barrier_annotator.checkout import checkout_path
from barrier_annotator.cvat.xml_document import CvatDocument, LabelSpec
from barrier_annotator.labelling import LabelOptions, label_folder, model_identity
from barrier_annotator.labelling.summary import LabelSummary
from barrier_annotator.training.data.synthetic import CLASS_NAMES, dataset_overrides, generate_dataset
from barrier_annotator.training.engine import train
from mask2former.command_line import model_config, setup_logging
from mask2former.predictor import Predictor

logger = logging.getLogger("barrier-demo")
TINY_CONFIG = "configs/safetybarrier/instance-segmentation/swin/tiny_cpu.yaml"
# The held-out site is rendered from another seed than the training set: new scenes, same world.
HELD_OUT_SEED_OFFSET = 1000


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "synthetic_site"

    @property
    def run(self) -> Path:
        return self.root / "training_run"

    @property
    def to_label(self) -> Path:
        return self.root / "to_label"

    @property
    def labelled(self) -> Path:
        return self.root / "labelled"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barrier-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="everything goes here")
    parser.add_argument("--train-minutes", type=float, default=5.0,
                        help="training time budget (evaluation not counted; default 5)")
    parser.add_argument("--train-images", type=int, default=200, help="synthetic training images")
    parser.add_argument("--val-images", type=int, default=30, help="synthetic validation images (mask AP)")
    parser.add_argument("--label-images", type=int, default=12, help="held-out images to pre-label")
    parser.add_argument("--size", type=int, default=320, help="long side of the synthetic images in px")
    parser.add_argument("--seed", type=int, default=0, help="synthetic site and training seed")
    parser.add_argument("--threshold", type=float, default=0.4,
                        help="minimum score of a written mask (the tiny model trained for minutes is unsure)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def write_unlabelled_task(images: list[Path], folder: Path) -> Path:
    """``folder/images/*`` + ``folder/annotations.xml`` listing them with no shapes: what CVAT's
    "Export task dataset" (CVAT for images 1.1, with images) gives for a task nobody labelled yet."""
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    document = CvatDocument.new([LabelSpec(name, "any") for name in CLASS_NAMES], task_name="demo site")
    for index, source in enumerate(sorted(images)):
        target = image_dir / f"site_{index:03d}{source.suffix}"
        shutil.copyfile(source, target)
        height, width = cv2.imread(str(target), cv2.IMREAD_UNCHANGED).shape[:2]
        document.add_image(target.name, width, height, image_id=index)
    annotations = folder / "annotations.xml"
    document.save(annotations)
    return annotations


def generate_data(paths: DemoPaths, args: argparse.Namespace) -> None:
    """The training/validation set and the held-out folder to pre-label."""
    generate_dataset(paths.data, num_train=args.train_images, num_val=args.val_images, image_size=args.size,
                     seed=args.seed, progress=not args.no_progress)
    held_out = paths.root / ".held_out_render"
    generate_dataset(held_out, num_train=0, num_val=args.label_images, image_size=args.size,
                     seed=args.seed + HELD_OUT_SEED_OFFSET, progress=not args.no_progress)
    write_unlabelled_task(sorted((held_out / "images/val").glob("*.jpg")), paths.to_label)
    shutil.rmtree(held_out)


def training_config(paths: DemoPaths, seed: int) -> CfgNode:
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(paths.run), "SEED", str(seed),
            *dataset_overrides(paths.data, "demo"),
            # One evaluation at the end; the budget decides the schedule.
            "TEST.EVAL_PERIOD", "0"]
    return model_config(checkout_path(TINY_CONFIG), opts)


def label_held_out(cfg: CfgNode, paths: DemoPaths, args: argparse.Namespace) -> LabelSummary:
    weights = paths.run / "model_final.pth"
    predictor = Predictor(cfg, weights=weights, device="cpu", score_threshold=args.threshold)
    logger.info("labelling %s with %s (%s)", paths.to_label, weights, predictor.backend_description)
    options = LabelOptions(input_dir=paths.to_label, output_dir=paths.labelled, batch_size=4, workers=2,
                           overwrite=True, progress=False if args.no_progress else None,
                           model=model_identity(cfg, weights))
    summary = label_folder(predictor, options)
    # Images beside the XML make ``labelled/`` a complete "CVAT for images 1.1" dataset folder
    # (Datumaro, CVAT's "Import dataset"); "Upload annotations" only needs the XML.
    shutil.copytree(paths.to_label / "images", paths.labelled / "images", dirs_exist_ok=True)
    return summary


def _percent(metrics: dict[str, float], key: str) -> str:
    value = metrics.get(f"segm/{key}", math.nan)
    return f"{value:.1f}" if math.isfinite(value) else "n/a"


def report(paths: DemoPaths, metrics: dict[str, float], summary: LabelSummary, seconds: float) -> None:
    """The closing lines: what the run produced and how to continue with real data."""
    visuals = [p for p in (paths.labelled / "visuals").rglob("*") if p.is_file()]
    lines = [
        "",
        f"barrier-demo finished in {seconds / 60:.1f} min",
        f"  mask AP on {paths.data / 'images/val'}: AP {_percent(metrics, 'AP')}, AP50 {_percent(metrics, 'AP50')}"
        + "".join(f", {name} AP50 {_percent(metrics, 'AP50-' + name)}" for name in CLASS_NAMES),
        f"  training run (model_final.pth, metrics.json, curves.png): {paths.run}",
        f"  pre-labelled task: {summary.annotations} ({sum(summary.shapes.values())} masks on "
        f"{summary.predicted} images) - upload it in CVAT with format 'CVAT 1.1'",
        f"  overlays: {paths.labelled / 'visuals'} ({len(visuals)} pictures)",
        "Same steps on your own data and weights:",
        f"  barrier-train --config-file <finetune config> --dataset NAME ANNOTATIONS IMAGES ...   "
        f"(see {paths.run / 'config.yaml'})",
        "  barrier-label --input_dir <CVAT export> --output_dir <out> --config-file <config> "
        "--weights <model_final.pth or model-zoo name>",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if min(args.train_images, args.val_images, args.label_images) < 1 or args.train_minutes <= 0:
        logger.error("image counts must be at least 1 and --train-minutes positive")
        return 2
    started = time.perf_counter()
    paths = DemoPaths(args.output.absolute())
    if paths.run.exists():
        # A fresh run each time: resuming an old run with other settings would mislead.
        shutil.rmtree(paths.run)
    logger.info("step 1/3: synthetic site -> %s", paths.root)
    generate_data(paths, args)
    logger.info("step 2/3: training the tiny model from scratch for %.1f min", args.train_minutes)
    cfg = training_config(paths, args.seed)
    metrics = train(cfg, max_seconds=args.train_minutes * 60, fit_schedule_to_budget=True,
                    progress=not args.no_progress)
    logger.info("step 3/3: pre-labelling %s", paths.to_label)
    summary = label_held_out(cfg, paths, args)
    summary.log(logger)
    report(paths, metrics, summary, time.perf_counter() - started)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
