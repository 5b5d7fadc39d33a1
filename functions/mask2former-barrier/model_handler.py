"""This function's configuration -> the package's model handler; nothing else lives here.

Environment (set in function*.yaml; deploy.sh stages the files these paths point to):

- ``BARRIER_CONFIG``: model config file (default ``/opt/nuclio/model/config.yaml``).
- ``BARRIER_WEIGHTS``: weights file, or a folder holding exactly one (deploy.sh keeps the
  original file name: ``.pkl`` and ``.pth`` load differently). Empty: the config's MODEL.WEIGHTS.
- ``BARRIER_DEVICE``: cpu, cuda or auto (default auto).
- ``BARRIER_BACKEND``: auto, torch or openvino (read by mask2former.backends).
- ``BARRIER_FUNCTION_KIND``: detector (default) or interactor.
- ``BARRIER_MAX_PIXELS``: largest frame accepted, in pixels (default 40 000 000).
"""

import os
from pathlib import Path

from mask2former.serving import DEFAULT_MAX_PIXELS, DETECTOR, ModelHandler

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
        max_pixels=int(os.environ.get("BARRIER_MAX_PIXELS") or DEFAULT_MAX_PIXELS),
    )
