"""Where weights come from: a local file, a URL, ``detectron2://``, or a known model-zoo file name.

Downloads go to a cache directory, through a temp file renamed only when complete, so an
interrupted download never leaves a truncated checkpoint that later loads as garbage.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..utils import atomic_open, default_cache_dir

logger = logging.getLogger(__name__)

_ZOO = "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/instance"
# Model-zoo COCO instance checkpoints (CC BY-NC 4.0); the suffix is the file's md5 prefix.
MODEL_ZOO_URLS = {
    "model_final_3c8ec9.pkl": f"{_ZOO}/maskformer2_R50_bs16_50ep/model_final_3c8ec9.pkl",
    "model_final_86143f.pkl": f"{_ZOO}/maskformer2_swin_tiny_bs16_50ep/model_final_86143f.pkl",
    "model_final_1e7f22.pkl": f"{_ZOO}/maskformer2_swin_small_bs16_50ep/model_final_1e7f22.pkl",
    "model_final_e5f453.pkl": f"{_ZOO}/maskformer2_swin_large_IN21k_384_bs16_100ep/model_final_e5f453.pkl",
}
_DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"


class WeightsNotFoundError(FileNotFoundError):
    """The weights are neither on disk nor downloadable; the message says where we looked."""


def resolve_weights(spec: str | Path, cache_dir: str | Path | None = None, *, timeout: float = 60.0) -> Path:
    """A local path for ``spec``, downloading into the cache when it is a URL or a model-zoo name."""
    text = str(spec)
    if not text:
        raise WeightsNotFoundError("no weights given (MODEL.WEIGHTS is empty)")
    local = Path(text).expanduser()
    if local.is_file():
        return local
    url = None
    if text.startswith("detectron2://"):
        url = _DETECTRON2_PREFIX + text[len("detectron2://") :]
    elif text.startswith(("http://", "https://")):
        url = text
    elif local.name in MODEL_ZOO_URLS and text == local.name:
        url = MODEL_ZOO_URLS[local.name]
    if url is None:
        raise WeightsNotFoundError(f"weights file not found: {local.resolve()}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    download(url, target, timeout=timeout)
    return target


def download(url: str, target: Path, *, timeout: float = 60.0) -> None:
    """Fetch ``url`` to ``target`` atomically, with a progress bar; a short read is an error."""
    logger.info("downloading %s -> %s", url, target)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with atomic_open(target, "wb") as handle, tqdm(
                total=total, unit="B", unit_scale=True, desc=target.name, leave=False
            ) as bar:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if total is not None and received != total:
                    raise WeightsNotFoundError(
                        f"download of {url} stopped after {received} of {total} bytes; nothing was kept"
                    )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise WeightsNotFoundError(f"could not download {url}: {error}") from error


def copy_weights(source: Path, destination: Path) -> None:
    """Copy a weights file atomically (used when packaging a model for deployment)."""
    with source.open("rb") as src, atomic_open(destination, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
