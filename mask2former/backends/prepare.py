"""Fill the OpenVINO caches ahead of time (the CPU function's image build runs this).

    barrier-prepare-openvino --config-file CFG --weights W [--cache-dir DIR] [--sizes 800x1344 ...]

Converts the model once (the converted-model cache) and, for each ``--sizes`` entry, compiles
it for that padded input size so OpenVINO's compiled-model cache holds it too. It also compiles
the fused deformable-sampling kernel into its disk cache (``$BARRIER_OV_CACHE/numba-kernels``
unless ``$NUMBA_CACHE_DIR`` says otherwise), so a worker's first request does not JIT it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from ..config import ConfigError, load_config
from ..modeling.pixel_decoder.fused_sampling import warm_up
from ..predictor import Predictor


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"size must look like 800x1344, got {text!r}") from error
    return height, width


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", help="default: MODEL.WEIGHTS")
    parser.add_argument("--cache-dir", help="default: $BARRIER_OV_CACHE or ~/.cache/barrier-annotator/openvino")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--sizes", nargs="*", type=_size, default=[],
                        help="padded input sizes to pre-compile, e.g. 800x1344 (multiples of 32)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    log = logging.getLogger("barrier-prepare-openvino")
    try:
        opts = list(args.opts) + (["DEPLOY.CACHE_DIR", args.cache_dir] if args.cache_dir else [])
        cfg = load_config(args.config_file, opts)
        start = time.perf_counter()
        predictor = Predictor(cfg, weights=args.weights, backend="openvino", precision=args.precision)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as error:
        log.error("%s", error)
        return 2
    log.info("converted model ready in %.1f s (%s)", time.perf_counter() - start, predictor.backend_description)
    start = time.perf_counter()
    kernel_cache = warm_up()
    if kernel_cache is not None:
        log.info("fused sampling kernel ready in %.1f s (cached in %s)", time.perf_counter() - start, kernel_cache)
    for height, width in args.sizes:
        start = time.perf_counter()
        predictor.runner.compiled_for((1, 3, height, width))
        predictor.runner(torch.zeros(1, 3, height, width))
        log.info("compiled for %dx%d in %.1f s", height, width, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
