"""The source checkout: ``deploy.sh``, ``functions/`` and ``configs/`` live there, not in site-packages.

Deploying stages the product's source into a Nuclio image, and the demo and ``barrier-serve`` read
the repository's configs and function folder, so these steps need the checkout the product was
installed from (the README installs it with ``pip install -e .``). They find it here, in one way,
and say so plainly when there is none, instead of each guessing a path relative to its own file.
"""

from __future__ import annotations

import os
from pathlib import Path

MARKERS = ("deploy.sh", "functions/mask2former-barrier/main.py", "configs")
"""What makes a folder the checkout."""


class CheckoutNotFoundError(FileNotFoundError):
    """No barrier-annotator source checkout: this step needs one."""


def is_checkout(folder: Path) -> bool:
    return all((folder / marker).exists() for marker in MARKERS)


def source_checkout(start: str | os.PathLike[str] | None = None) -> Path:
    """The checkout this package was installed from (an editable install), else the first folder
    holding one from ``start`` (default: the working directory) upwards."""
    installed_from = Path(__file__).resolve().parents[1]
    if is_checkout(installed_from):
        return installed_from
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if is_checkout(folder):
            return folder
    raise CheckoutNotFoundError(
        f"no barrier-annotator source checkout found (a folder with {', '.join(MARKERS)}) at {installed_from} "
        f"or above {here}: install the product from its repository (pip install -e .) or run from inside it")


def checkout_path(relative: str) -> Path:
    """A file or folder of the checkout, e.g. ``checkout_path("deploy.sh")``."""
    return source_checkout() / relative
