"""The whole product in one command, on CPU, with nothing to download: ``barrier-demo``.

1. generates a small synthetic construction site (guardrails with top rails, mid rails,
   toeboards and posts) as a COCO training/validation set, rendered from its own seed,
2. evaluates the shipped tiny Mask2Former (``tiny_synthetic.yaml``, pretrained on other renders of
   the same generator: ``models/tiny_synthetic.pth``) on the validation images, then finetunes it
   on the site's training images for a fixed time budget and evaluates it again (COCO mask AP);
   ``--from-scratch`` trains ``tiny_cpu.yaml`` from random weights instead, as a real first model would,
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
import numpy as np
from fvcore.common.config import CfgNode

from barrier_annotator.checkout import checkout_path
from barrier_annotator.contact_sheet import contact_sheet
from barrier_annotator.cvat.xml_document import CvatDocument, LabelSpec
from barrier_annotator.labelling import LabelOptions, label_folder, model_identity
from barrier_annotator.labelling.outputs import OutputFolder
from barrier_annotator.labelling.prediction_records import record_instances
from barrier_annotator.labelling.summary import LabelSummary
from barrier_annotator.training.data.synthetic import CLASS_NAMES, dataset_overrides, generate_dataset, render_sample
from barrier_annotator.training.engine import train
from barrier_annotator.training.inference import evaluate
from barrier_annotator.visualize import save_rgb
from mask2former.command_line import model_config, setup_logging
from mask2former.predictor import Predictor
from mask2former.structures import Instances
from mask2former.utils import file_sha256

logger = logging.getLogger("barrier-demo")
TINY_CONFIG = "configs/safetybarrier/instance-segmentation/swin/tiny_cpu.yaml"
PRETRAINED_CONFIG = "configs/safetybarrier/instance-segmentation/swin/tiny_synthetic.yaml"
PRETRAINED_WEIGHTS = "models/tiny_synthetic.pth"
# SHA-256 of the shipped file: a damaged or swapped checkpoint stops the demo instead of quietly scoring low.
PRETRAINED_SHA256 = "b47e3156c7bc8dd7f0fe45cf03025e4c3fe5dca87a9a1123e837f4bfa32ae03a"
# The finetune of the pretrained model: a tenth of its pretraining LR, a short warmup, one drop at 80 %
# of the (budget-fitted) schedule. Figures: /work/notes/demo_experiments.md.
FINETUNE_OPTS = ("SOLVER.BASE_LR", "0.0002", "SOLVER.WARMUP_ITERS", "10", "SOLVER.MAX_ITER", "1000",
                 "SOLVER.STEPS", "(800,)")
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

    @property
    def contact_sheet(self) -> Path:
        return self.root / "contact_sheet.png"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barrier-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="everything goes here")
    parser.add_argument("--train-minutes", type=float, default=4.0,
                        help="training time budget (evaluation not counted; default 4)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="pretrained checkpoint of tiny_synthetic.yaml to finetune (default: the shipped one)")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train tiny_cpu.yaml from random weights instead of finetuning --weights")
    parser.add_argument("--train-images", type=int, default=200, help="synthetic training images")
    parser.add_argument("--val-images", type=int, default=30, help="synthetic validation images (mask AP)")
    parser.add_argument("--label-images", type=int, default=12, help="held-out images to pre-label")
    parser.add_argument("--size", type=int, default=640, help="long side of the synthetic images in px")
    parser.add_argument("--seed", type=int, default=0, help="synthetic site and training seed")
    parser.add_argument("--threshold", type=float, default=0.6,
                        help="minimum score of a written mask (default 0.6: the model is sure of its real "
                             "instances; lower scores are mostly duplicates, which annotators would delete)")
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


def training_config(paths: DemoPaths, args: argparse.Namespace) -> CfgNode:
    weights = "" if args.from_scratch else str(args.weights)
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(paths.run), "SEED", str(args.seed),
            *dataset_overrides(paths.data, "demo"),
            # One evaluation at the end; the budget decides the schedule.
            "TEST.EVAL_PERIOD", "0", *(() if args.from_scratch else FINETUNE_OPTS)]
    return model_config(checkout_path(TINY_CONFIG if args.from_scratch else PRETRAINED_CONFIG), opts)


def shipped_weights() -> Path:
    return checkout_path(PRETRAINED_WEIGHTS)


def check_shipped_weights(path: Path) -> str | None:
    """Why the shipped checkpoint cannot be used (missing, or not the file it should be), else None.

    Only the shipped file is checked; ``--weights`` pointing elsewhere is the user's own checkpoint."""
    if path.absolute() != shipped_weights().absolute():
        return None
    if not path.is_file():
        return f"the shipped checkpoint {path} is missing (restore it from the repository, or use --from-scratch)"
    digest = file_sha256(path)
    if digest != PRETRAINED_SHA256:
        return (f"the shipped checkpoint {path} is damaged or not the released file (sha256 {digest}, expected "
                f"{PRETRAINED_SHA256}); restore it from the repository, or use --from-scratch")
    return None


def evaluate_pretrained(cfg: CfgNode, paths: DemoPaths, args: argparse.Namespace) -> dict[str, float]:
    """Mask AP of the shipped checkpoint on this site's validation images, before any finetuning."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR = str(paths.root / "pretrained_eval")
    return evaluate(cfg, str(args.weights), progress=not args.no_progress)


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


def true_instances(seed: int, index: int, size: int) -> Instances:
    """The ground truth of held-out image ``index``: rendered again from its seed (bit-identical)."""
    scene = render_sample(seed + HELD_OUT_SEED_OFFSET, "val", index, size)
    parts = scene.instances
    masks = (np.stack([part.mask for part in parts]) if parts
             else np.zeros((0, *scene.image.shape[:2]), dtype=bool))
    return Instances.from_masks(masks, np.ones(len(parts)), np.array([p.class_id for p in parts], dtype=np.int64),
                                CLASS_NAMES)


def write_contact_sheet(paths: DemoPaths, args: argparse.Namespace) -> Path:
    """The held-out images, the masks written for CVAT beside the true ones: the demo's picture."""
    images, predicted, truth, captions = [], [], [], []
    outputs = OutputFolder(paths.labelled)
    for index in range(args.label_images):
        name = f"site_{index:03d}.jpg"
        record = outputs.read_record(name)
        if record is None:  # an image the labelling run could not read: nothing to show
            continue
        bgr = cv2.imread(str(paths.labelled / "images" / name), cv2.IMREAD_COLOR)
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        predicted.append(record_instances(record, CLASS_NAMES))
        truth.append(true_instances(args.seed, index, args.size))
        captions.append(f"{name}: {len(predicted[-1])} predicted, {len(truth[-1])} true")
    title = f"barrier-demo held-out site (seed {args.seed}), masks scoring >= {args.threshold:g}"
    sheet = contact_sheet(images, predicted, truth, captions=captions, title=title)
    save_rgb(str(paths.contact_sheet), sheet)
    return paths.contact_sheet


def _percent(metrics: dict[str, float], key: str) -> str:
    value = metrics.get(f"segm/{key}", math.nan)
    return f"{value:.1f}" if math.isfinite(value) else "n/a"


def _ap_line(metrics: dict[str, float]) -> str:
    return (f"AP {_percent(metrics, 'AP')}, AP50 {_percent(metrics, 'AP50')}"
            + "".join(f", {name} AP50 {_percent(metrics, 'AP50-' + name)}" for name in CLASS_NAMES))


def report(paths: DemoPaths, metrics: dict[str, float], summary: LabelSummary, seconds: float,
           before: dict[str, float] | None = None) -> None:
    """The closing lines: what the run produced and how to continue with real data."""
    visuals = [p for p in (paths.labelled / "visuals").rglob("*") if p.is_file()]
    lines = [
        "",
        f"barrier-demo finished in {seconds / 60:.1f} min",
        f"  mask AP on {paths.data / 'images/val'}:",
        *([f"    pretrained, before the finetune: {_ap_line(before)}"] if before is not None else []),
        f"    {'after the finetune' if before is not None else 'trained from scratch'}: {_ap_line(metrics)}",
        f"  training run (model_final.pth, metrics.json, curves.png): {paths.run}",
        f"  pre-labelled task: {summary.annotations} ({sum(summary.shapes.values())} masks on "
        f"{summary.predicted} images) - upload it in CVAT with format 'CVAT 1.1'",
        f"  overlays: {paths.labelled / 'visuals'} ({len(visuals)} pictures); prediction beside ground truth: "
        f"{paths.contact_sheet}",
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
    if args.weights is None:
        args.weights = shipped_weights()
    problem = None if args.from_scratch else check_shipped_weights(args.weights)
    if problem:
        logger.error("%s", problem)
        return 2
    started = time.perf_counter()
    paths = DemoPaths(args.output.absolute())
    for stale in (paths.run, paths.root / "pretrained_eval"):
        if stale.exists():
            # A fresh run each time: resuming an old run with other settings would mislead.
            shutil.rmtree(stale)
    logger.info("step 1/3: synthetic site -> %s", paths.root)
    generate_data(paths, args)
    cfg = training_config(paths, args)
    before = None
    if args.from_scratch:
        logger.info("step 2/3: training the tiny model from scratch for %.1f min", args.train_minutes)
    else:
        logger.info("step 2/3: evaluating %s, then finetuning it for %.1f min", args.weights, args.train_minutes)
        before = evaluate_pretrained(cfg, paths, args)
    metrics = train(cfg, max_seconds=args.train_minutes * 60, fit_schedule_to_budget=True,
                    progress=not args.no_progress)
    logger.info("step 3/3: pre-labelling %s", paths.to_label)
    summary = label_held_out(cfg, paths, args)
    summary.log(logger)
    write_contact_sheet(paths, args)
    report(paths, metrics, summary, time.perf_counter() - started, before)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
