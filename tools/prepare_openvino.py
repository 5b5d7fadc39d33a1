"""Fill the OpenVINO caches ahead of time: ``barrier-prepare-openvino``.

    barrier-prepare-openvino --config-file CFG --weights W [--cache-dir DIR] [--sizes 800x1344 ...]

Converts the model once (the converted-model cache) and, for each ``--sizes`` entry, compiles it
for that padded input size so OpenVINO's compiled-model cache holds it too. It also compiles the
fused deformable-sampling kernel into its disk cache (``$NUMBA_CACHE_DIR``, else
``~/.cache/barrier-annotator/numba-kernels``), so a worker's first request does not JIT it. The
Nuclio CPU image does the same at build time through its ``model_handler.py --prepare``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from mask2former.backends import warm_up
from mask2former.command_line import MODEL_ERRORS, add_model_arguments, predictor_from_args, setup_logging

logger = logging.getLogger("barrier-prepare-openvino")


def padded_size(text: str) -> tuple[int, int]:
    """``800x1344`` -> ``(800, 1344)`` (height x width of the padded network input)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must look like 800x1344, got {text!r}") from error
    if height < 32 or width < 32 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f"size {text!r}: height and width must be multiples of 32")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barrier-prepare-openvino", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", help="OpenVINO cache (default: $BARRIER_OV_CACHE, else the config's "
                                            "DEPLOY.CACHE_DIR, else ~/.cache/barrier-annotator/openvino)")
    parser.add_argument("--sizes", nargs="*", type=padded_size, default=[],
                        help="padded input sizes to pre-compile, e.g. 800x1344 (multiples of 32)")
    add_model_arguments(parser, config_required=True, threshold=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    if args.cache_dir:
        args.opts = [*args.opts, "DEPLOY.CACHE_DIR", args.cache_dir]
    try:
        start = time.perf_counter()
        predictor = predictor_from_args(args, backend="openvino", device="cpu")
    except MODEL_ERRORS as error:
        logger.error("%s", error)
        return 2
    logger.info("converted model ready in %.1f s (%s)", time.perf_counter() - start, predictor.backend_description)
    warm_up(predictor.runner, args.sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
