"""On-disk cache of converted OpenVINO models, so a worker's cold start does not re-export.

An entry is keyed by everything that changes the graph: the weights' content, the model part of
the config, the OpenVINO version and the export policy. It is written into a temporary folder
and renamed into place, and carries a manifest with the files' SHA-256, so a half-written,
corrupt or stale entry is detected, removed and rebuilt instead of used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from fvcore.common.config import CfgNode

from ..utils import default_cache_dir as product_cache_dir
from ..utils import dumps_json, file_sha256
from .openvino_backend import shared_core
from .openvino_runtime import import_openvino

logger = logging.getLogger(__name__)

EXPORT_POLICY = "dynamic-bhw-v1"  # bump when the export changes in a way the key cannot see
_MANIFEST = "manifest.json"
_XML, _BIN = "model.xml", "model.bin"
DIGESTS = "digests.json"
"""Memo of weights and cache-file digests, kept in the cache folder (see ``utils.file_sha256``)."""


def default_cache_dir() -> Path:
    """``<product cache>/openvino``; deployments choose another with ``DEPLOY.CACHE_DIR`` (the entry
    points map ``$BARRIER_OV_CACHE`` onto it)."""
    return product_cache_dir() / "openvino"


def cache_key(weights_digest: str, cfg: CfgNode, *, sampling: str = "graph") -> str:
    """Key of one converted model: weights, MODEL config, OpenVINO version, export policy and how
    the deformable sampling was exported (``graph``, or ``fused-op``: the custom operation)."""
    ov = import_openvino()
    payload = json.dumps({
        "weights": weights_digest,
        "model": cfg.MODEL.dump(),
        "openvino": ov.get_version(),
        "torch": torch.__version__,
        "policy": EXPORT_POLICY,
        **({} if sampling == "graph" else {"sampling": sampling}),  # "graph" keeps the earlier keys valid
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ConvertedModelCache:
    """Converted models under ``root/<key>/`` (``model.xml``, ``model.bin``, ``manifest.json``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str) -> Any | None:
        """The cached model, or None when absent; a damaged or stale entry is removed."""
        entry = self.entry(key)
        if not entry.exists():
            return None
        problem = self._validate(entry, key)
        if problem:
            logger.warning("OpenVINO cache entry %s is unusable (%s); rebuilding it", entry, problem)
            shutil.rmtree(entry, ignore_errors=True)
            return None
        try:
            return shared_core().read_model(str(entry / _XML))
        except RuntimeError as error:
            logger.warning("OpenVINO cache entry %s cannot be read (%s); rebuilding it", entry, error)
            shutil.rmtree(entry, ignore_errors=True)
            return None

    def _validate(self, entry: Path, key: str) -> str | None:
        manifest = _read_json(entry / _MANIFEST)
        if manifest is None:
            return "no readable manifest"
        if manifest.get("key") != key:
            return "manifest key differs"
        for name in (_XML, _BIN):
            path = entry / name
            if not path.is_file():
                return f"{name} missing"
            # hashed once per version of the file: a later start only compares its stat
            if manifest.get("sha256", {}).get(name) != file_sha256(path, memo=self.root / DIGESTS):
                return f"{name} checksum mismatch"
        return None

    def store(self, key: str, converted: Any, details: dict | None = None) -> Path:
        """Write the entry atomically (temp folder + rename); returns its folder."""
        ov = import_openvino()
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            ov.save_model(converted, str(staging / _XML), compress_to_fp16=False)
            manifest = {
                "key": key,
                "openvino": ov.get_version(),
                "policy": EXPORT_POLICY,
                "sha256": {name: file_sha256(staging / name) for name in (_XML, _BIN)},
                **(details or {}),
            }
            (staging / _MANIFEST).write_text(dumps_json(manifest, indent=2))
            target = self.entry(key)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)
