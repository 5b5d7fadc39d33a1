"""Run the model on images and write overlay pictures: ``barrier-predict --input frame.jpg``.

Output names: ``<output>/<the input's path below the inputs' common folder>_overlay.png``. The
full file name is kept and sub-folders are mirrored, so ``img.bmp`` and ``img.tif`` write
``img.bmp_overlay.png`` and ``img.tif_overlay.png``, and ``a/frame_0001.jpg`` and
``b/frame_0001.jpg`` write ``a/frame_0001.jpg_overlay.png`` and ``b/frame_0001.jpg_overlay.png``:
no output ever replaces another of the same run. A file given twice is predicted once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from barrier_annotator.visualize import draw_instances, save_rgb
from mask2former.command_line import MODEL_ERRORS, add_model_arguments, predictor_from_args, setup_logging
from mask2former.io import ImageDecodeError, read_image

logger = logging.getLogger("barrier-predict")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True,
                        help="output folder: <name>_overlay.png per input, sub-folders mirrored below the "
                             "inputs' common folder")
    add_model_arguments(parser)
    return parser


def overlay_paths(inputs: Sequence[str], output: Path) -> dict[str, Path]:
    """Input -> overlay file, one distinct file per distinct input (see the module docstring).

    Raises ValueError if two outputs would differ only in letter case (one file on a case-insensitive
    disk): better refused than one silently replacing the other.
    """
    absolute = {name: os.path.normpath(os.path.abspath(name)) for name in inputs}
    unique = list(dict.fromkeys(absolute.values()))
    root = os.path.commonpath([os.path.dirname(path) for path in unique]) if unique else ""
    targets: dict[str, Path] = {}
    taken: dict[str, str] = {}
    for name, path in absolute.items():
        target = output / (os.path.relpath(path, root) + "_overlay.png")
        other = taken.setdefault(str(target).casefold(), path)
        if other != path:
            raise ValueError(f"{other} and {path} would both write {target} on a case-insensitive disk")
        targets[name] = target
    return targets


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        predictor = predictor_from_args(args)
    except MODEL_ERRORS as error:
        logger.error("%s", error)
        return 2
    output = Path(args.output)
    try:
        targets = overlay_paths(args.input, output)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    failures = 0
    done: set[Path] = set()
    for name, target in targets.items():
        if target in done:
            logger.info("%s: given twice, predicted once", name)
            continue
        done.add(target)
        try:
            image = read_image(name)
        except ImageDecodeError as error:
            logger.error("skipping %s", error)
            failures += 1
            continue
        instances = predictor(image)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_rgb(str(target), draw_instances(image, instances))
        counts = {label: instances.labels.count(label) for label in sorted(set(instances.labels))}
        logger.info("%s: %d instances %s -> %s", name, len(instances), counts, target)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
