"""CVAT image names -> files, refusing names that would reach outside the folder.

CVAT names images by their path inside the task ("site-a/cam1/0001.jpg"), always with ``/``.
An annotation file is untrusted input, so a name is turned into a path only when every part is
a plain file or folder name: no absolute paths, no ``..``, no empty parts, no backslashes or
drive letters (which another operating system would read as separators or roots).
"""

from __future__ import annotations

import re
from pathlib import Path

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeImageNameError(ValueError):
    """An image name that is not a plain relative path; the message says what is wrong."""


def relative_parts(name: str) -> tuple[str, ...]:
    """The folder and file parts of a CVAT image name, or :class:`UnsafeImageNameError`."""
    if not name or not name.strip():
        raise UnsafeImageNameError("empty image name")
    if "\x00" in name:
        raise UnsafeImageNameError(f"image name {name!r} contains a NUL character")
    if "\\" in name:
        raise UnsafeImageNameError(f"image name {name!r} contains a backslash; CVAT names use '/'")
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafeImageNameError(f"image name {name!r} is absolute; expected a path inside images/")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafeImageNameError(f"image name {name!r} has a {part or 'empty'!r} part; "
                                       "only plain folder and file names are accepted")
    return tuple(parts)


def image_file(images_dir: Path, name: str) -> Path:
    """Where image ``name`` lives under ``images_dir`` (sub-folders kept)."""
    return images_dir.joinpath(*relative_parts(name))


def mirrored_file(root: Path, name: str, suffix: str = "") -> Path:
    """``root/<name><suffix>``: outputs mirror the image's sub-folders, so equal base names in
    different folders never collide; the full file name is kept so ``a.jpg`` and ``a.png`` do not
    either."""
    parts = relative_parts(name)
    return root.joinpath(*parts[:-1], parts[-1] + suffix)

