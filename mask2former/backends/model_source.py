"""What a backend is handed: which model (the config), which weights (a file, or a model already in
memory) and the weights' digest. One object instead of callbacks, so the predictor never reaches
into a backend's cache and a backend builds the torch model only when it needs it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from fvcore.common.config import CfgNode

from ..config.build import build_model
from ..modeling.meta_arch import MaskFormer
from ..utils import file_sha256
from ..weights import WeightsReport, load_checkpoint

logger = logging.getLogger(__name__)


def state_dict_digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of in-memory weights (a model that did not come from a file), names included."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class ModelSource:
    """The model a backend runs: built from ``cfg`` and loaded from ``weights`` on first need, or
    ``model`` as given. With OpenVINO and a warm cache the torch model is never built."""

    def __init__(self, cfg: CfgNode, weights: Path | None = None, model: MaskFormer | None = None) -> None:
        self.cfg = cfg
        self.weights = weights
        self.model = model.eval() if model is not None else None
        self.report: WeightsReport | None = None

    def torch_model(self) -> MaskFormer:
        """The torch model, built and loaded once."""
        if self.model is None:
            model = build_model(self.cfg)
            if self.weights is not None:
                self.report = load_checkpoint(model, self.weights)
            else:
                logger.warning("no weights given: the model is randomly initialised")
            self.model = model.eval()
        return self.model

    def digest(self, memo: Path | None = None) -> str:
        """The weights' content digest: the file's SHA-256 while the model is not built (memoised in
        ``memo``, see :func:`~mask2former.utils.file_sha256`), else the model's state dict's."""
        if self.weights is not None and self.model is None:
            return file_sha256(self.weights, memo=memo)
        return state_dict_digest(self.torch_model().state_dict().items())
