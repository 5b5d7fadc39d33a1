"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, sync_data: bool = True,
                sync_directory: bool = True) -> Iterator[IO[Any]]:
    """Write to a temp file beside ``path``, fsync, then ``os.replace``; on error the target is untouched.

    The result keeps an existing file's permission bits (a new file gets ``0o666`` less the umask,
    as a plain ``open`` would, not ``mkstemp``'s 0600), and the directory is fsynced so the
    rename itself survives a crash. The rename alone already protects against a killed process;
    the fsyncs protect against a power cut, and callers that can lose a file to one (a file that is
    redone when missing) turn them off: ``sync_data=False`` can leave an empty file after a power
    cut, ``sync_directory=False`` only the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        permissions = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        permissions = 0o666 & ~_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            if sync_data:
                os.fsync(handle.fileno())
        os.chmod(tmp_name, permissions)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if sync_directory:
        _fsync_directory(path.parent)


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` set-and-restore races threads)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable; some platforms and file systems cannot open or fsync a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, sync_directory: bool = True) -> None:
    with atomic_open(path, "w", sync_directory=sync_directory) as handle:
        json.dump(data, handle, indent=indent)
        handle.write("\n")


def atomic_write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomic write for APIs that write to a binary file object (``torch.save``, ``Image.save``)."""
    with atomic_open(path, "wb") as handle:
        writer(handle)
