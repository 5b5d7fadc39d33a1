"""Files the product writes and reads back: crash-safe writes (a reader sees the old file or the new
one, never half of either), strict JSON (no bare ``NaN``/``Infinity``, which JSON does not have and
strict parsers reject), streamed digests, and where the caches live."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any


def default_cache_dir() -> Path:
    """The product's cache root (downloaded weights, the OpenVINO cache, compiled kernels):
    ``$BARRIER_ANNOTATOR_CACHE``, else ``$XDG_CACHE_HOME/barrier-annotator`` (``~/.cache/...``).
    The one variable the library reads itself: like ``TORCH_HOME``, a per-user location that every
    entry point, training worker and test must agree on."""
    base = os.environ.get("BARRIER_ANNOTATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "barrier-annotator")
    return Path(base)


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


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by None, in dicts, lists and tuples.

    Python's ``json`` writes NaN as a bare ``NaN`` token by default: not JSON, and metrics hold
    NaN wherever there was nothing to measure (COCO AP of an absent class or size).
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


def dumps_json(data: Any, **options: Any) -> str:
    """``json.dumps`` for every JSON the product writes: non-finite numbers become null.

    Reading stays lenient (``json.loads`` accepts the ``NaN`` that older files hold).
    """
    return json.dumps(json_ready(data), allow_nan=False, **options)


def atomic_write_json(path: str | Path, data: Any, *, indent: int | None = 2, sync_directory: bool = True) -> None:
    """Strict JSON (see :func:`dumps_json`), written atomically."""
    text = dumps_json(data, indent=indent)  # before opening: a value JSON cannot hold leaves the old file
    with atomic_open(path, "w", sync_directory=sync_directory) as handle:
        handle.write(text)
        handle.write("\n")


def file_sha256(path: str | Path, *, memo: Path | None = None, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, streamed (a Swin-L checkpoint is ~800 MB: never read whole).

    With ``memo`` (a JSON file), digests are remembered by the file's (path, inode, size, mtime,
    ctime): a rewritten file is hashed again, an unchanged one is not. The memo is best effort.
    """
    path = Path(path).resolve()
    token = None
    known: dict[str, str] = {}
    if memo is not None:
        stat = path.stat()
        token = f"{path}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(memo.read_text())
        if not isinstance(known, dict):
            known = {}
        if token in known:
            return known[token]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    if memo is not None and token is not None:
        known = {name: value for name, value in known.items() if not name.startswith(f"{path}:")}
        known[token] = digest.hexdigest()
        with contextlib.suppress(OSError):
            atomic_write_json(memo, known)
    return digest.hexdigest()


def atomic_write_with(path: str | Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Atomic write for APIs that write to a binary file object (``torch.save``, ``Image.save``)."""
    with atomic_open(path, "wb") as handle:
        writer(handle)
