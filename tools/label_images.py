"""Pre-label a CVAT task offline: ``barrier-label --input_dir export/ --output_dir labelled/``.

``export/`` is a task exported from CVAT as "CVAT for images 1.1" with images: ``images/`` and
``annotations.xml``. ``labelled/annotations.xml`` is that file with the model's shapes added
(``<mask>``, or ``<polygon>`` where the task label asks for it or ``--polygons`` is given; source
"semi-auto"), ready for CVAT's "Upload annotations" with format "CVAT 1.1". Everything else in
the file is kept: ``<meta>``, every image, every shape a person made. ``labelled/visuals/``
holds an overlay per image and ``labelled/predictions/`` one JSON record per image.

Re-running on a fresh export never undoes review: ``labelled/predictions/`` records what the
tool found and left in each frame, so a frame a person has touched since (a shape of the tool's
deleted, moved, repainted or relabelled, a flag or attribute set, a shape added) is left exactly
as the export has it, and nothing is added there; untouched frames are refreshed (the tool's
shapes replaced). ``--relabel-reviewed`` labels reviewed frames again (their shapes kept, the
tool's unchanged ones replaced). Keep the same ``--output_dir`` for re-runs, or point
``--records-from`` at the earlier one: without records, a frame holding shapes uploaded from a
file (CVAT marks them source "file", the tool's own included) is left alone too.
``--resume`` (default) continues an interrupted run; ``--overwrite`` predicts every image again.

Exit status: 0 all images labelled or left alone as reviewed, 1 some images skipped (see the
summary), 2 fatal error (annotation file missing, malformed, unsafe, a "CVAT for video" export or
without any image; config or weights unusable; output not writable), 130 interrupted (re-run
with ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from barrier_annotator.labelling import FatalInputError, LabelOptions, label_folder, model_identity
from mask2former.command_line import MODEL_ERRORS, add_model_arguments, predictor_from_args, setup_logging

logger = logging.getLogger("barrier-label")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input_dir", "--input-dir", required=True, type=Path,
                        help="CVAT export: images/ and annotations.xml (CVAT for images 1.1)")
    parser.add_argument("--output_dir", "--output-dir", required=True, type=Path,
                        help="annotations.xml, visuals/ and predictions/ go here (keep it for re-runs)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call")
    parser.add_argument("--workers", type=int, default=2, help="threads reading and decoding images ahead (0: none)")
    parser.add_argument("--polygons", action="store_true",
                        help="<polygon> instead of <mask> for task labels of type 'any' (a label declared "
                             "'mask' or 'polygon' always gets its own type, as CVAT expects)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", dest="overwrite", action="store_false",
                      help="keep predictions this run already made (default)")
    mode.add_argument("--overwrite", dest="overwrite", action="store_true",
                      help="predict every image again, replacing the tool's earlier shapes (reviewed "
                           "frames are still left alone: see --relabel-reviewed)")
    parser.set_defaults(overwrite=False)  # store_false alone would make --overwrite the default
    parser.add_argument("--relabel-reviewed", action="store_true",
                        help="also label frames a person changed since this tool wrote them (and frames with "
                             "uploaded shapes it has no record of): their shapes are kept, the model's added")
    parser.add_argument("--records-from", type=Path, default=None,
                        help="an earlier output folder whose predictions/ tell which shapes this tool wrote, "
                             "for a run into a new --output_dir")
    parser.add_argument("--save-interval", type=float, default=60.0,
                        help="seconds between intermediate saves of annotations.xml (it is always saved at the end)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no progress bar (it is shown on terminals only anyway)")
    add_model_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        logger.error("--batch-size must be at least 1")
        return 2
    try:
        predictor = predictor_from_args(args)
    except MODEL_ERRORS as error:
        logger.error("%s", error)
        return 2
    logger.info("model: %s on %s (%s), threshold %.2f", args.config_file, predictor.device,
                predictor.backend_description, predictor.score_threshold)
    options = LabelOptions(
        input_dir=args.input_dir, output_dir=args.output_dir, batch_size=args.batch_size, workers=args.workers,
        polygons=args.polygons, overwrite=args.overwrite, relabel_reviewed=args.relabel_reviewed,
        records_from=args.records_from, save_interval=args.save_interval,
        progress=args.progress, model=model_identity(predictor.cfg, args.weights),
    )
    try:
        summary = label_folder(predictor, options)
    except FatalInputError as error:
        logger.error("%s", error)
        return 2
    except OSError as error:
        logger.error("cannot write the output: %s", error)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted: finished images are saved; run again with --resume to continue")
        return 130
    summary.log(logger)
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
