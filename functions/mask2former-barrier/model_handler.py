"""This function's configuration -> the package's model handler; nothing else lives here.

Environment (set in function*.yaml; deploy.sh stages the files these paths point to):

- ``BARRIER_CONFIG``: model config file (default ``/opt/nuclio/model/config.yaml``).
- ``BARRIER_WEIGHTS``: weights file, or a folder holding exactly one (deploy.sh keeps the
  original file name: ``.pkl`` and ``.pth`` load differently). Empty: the config's MODEL.WEIGHTS.
- ``BARRIER_DEVICE``: cpu, cuda or auto (default auto).
- ``BARRIER_BACKEND``, ``BARRIER_OV_CACHE``: the backend and the OpenVINO cache (config overrides,
  see ``mask2former.command_line``).
- ``BARRIER_FUNCTION_KIND``: detector (default) or interactor.
- ``BARRIER_MAX_PIXELS``: largest frame accepted, in pixels (default 40 000 000).

``python model_handler.py --prepare 800x1344 ...`` (the CPU image's build step) builds the same
handler a worker builds and fills its caches for those padded sizes, so a cold start loads them.
"""

import os
import sys
from pathlib import Path

from barrier_annotator.serving import DEFAULT_MAX_PIXELS, DETECTOR, ModelHandler
from mask2former.command_line import environment_opts, setup_logging

DEFAULT_CONFIG = "/opt/nuclio/model/config.yaml"
DEFAULT_WEIGHTS = "/opt/nuclio/model/weights"


def weights_file(spec):
    """A weights file, the single file of a folder, or None (empty: use the config's MODEL.WEIGHTS)."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if len(files) != 1:
            raise FileNotFoundError(f"expected exactly one weights file in {path}, found {[p.name for p in files]}")
        return files[0]
    return spec


def function_kind():
    return os.environ.get("BARRIER_FUNCTION_KIND", DETECTOR)


def create():
    return ModelHandler.from_files(
        os.environ.get("BARRIER_CONFIG", DEFAULT_CONFIG),
        weights_file(os.environ.get("BARRIER_WEIGHTS", DEFAULT_WEIGHTS)),
        device=os.environ.get("BARRIER_DEVICE", "auto"),
        opts=environment_opts(),
        max_pixels=int(os.environ.get("BARRIER_MAX_PIXELS") or DEFAULT_MAX_PIXELS),
    )


def prepare(sizes):
    """Build the worker's handler once and warm its caches for ``sizes`` (``"800x1344"`` strings)."""
    from mask2former.backends import warm_up

    setup_logging()
    padded = [tuple(int(part) for part in size.lower().split("x")) for size in sizes]
    warm_up(create().predictor.runner, padded)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--prepare"]:
        sys.exit("usage: python model_handler.py --prepare HEIGHTxWIDTH ...")
    prepare(sys.argv[2:])
