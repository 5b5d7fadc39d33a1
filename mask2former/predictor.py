"""The predictor every caller uses: image in, :class:`Instances` at the original size out.

Images are RGB ``uint8`` HxWx3 arrays (or files / encoded bytes); pass ``channels="BGR"`` for
OpenCV arrays. Resizing follows detectron2's ``DefaultPredictor`` (shortest edge to
``INPUT.MIN_SIZE_TEST``, longest capped at ``MAX_SIZE_TEST``, PIL bilinear), normalisation and
zero padding follow ``MaskFormer``, so results equal upstream's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from fvcore.common.config import CfgNode

from .backends import make_runner
from .backends.model_source import ModelSource
from .config import load_config
from .config.class_names import class_names_for
from .hardware import resolve_device
from .io import ImageInput, as_rgb_array
from .modeling.meta_arch import MaskFormer
from .postprocess import ResizeGeometry, instances_from_outputs
from .preprocess import normalize_and_pad, resize_image, resized_shape
from .structures import Instances
from .weights import WeightsReport, resolve_weights

logger = logging.getLogger(__name__)


class Predictor:
    """Mask2Former inference with the product's conventions (score threshold, max detections)."""

    def __init__(
        self,
        cfg: CfgNode,
        *,
        weights: str | Path | None = None,
        model: MaskFormer | None = None,
        device: str | torch.device = "auto",
        backend: str | None = None,
        precision: str | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.cfg = cfg.clone()
        self.device = resolve_device(device)
        self.class_names = tuple(class_names) if class_names else class_names_for(cfg)
        self.score_threshold = float(cfg.DEPLOY.SCORE_THRESHOLD if score_threshold is None else score_threshold)
        self.max_detections = int(max_detections or cfg.TEST.DETECTIONS_PER_IMAGE)
        self.short_edge = int(cfg.INPUT.MIN_SIZE_TEST)
        self.max_size = int(cfg.INPUT.MAX_SIZE_TEST)
        self.pixel_mean = torch.tensor(list(cfg.MODEL.PIXEL_MEAN), dtype=torch.float32)
        self.pixel_std = torch.tensor(list(cfg.MODEL.PIXEL_STD), dtype=torch.float32)
        self.size_divisibility = int(cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY)
        if len(self.class_names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
            raise ValueError(f"{len(self.class_names)} class names for a model with "
                             f"{cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} classes")
        spec = cfg.MODEL.WEIGHTS if weights is None else weights
        weights_path = resolve_weights(spec) if model is None and spec else None
        self.source = ModelSource(self.cfg, weights_path, model)
        self.runner = make_runner(self.source, backend=backend or cfg.DEPLOY.BACKEND,
                                  precision=precision or cfg.DEPLOY.PRECISION, device=self.device)

    @property
    def model(self) -> MaskFormer | None:
        """The torch model, or None while the backend has not needed it (a warm OpenVINO cache)."""
        return self.source.model

    @property
    def load_report(self) -> WeightsReport | None:
        """What loading the weights into the torch model reported (None until it was built)."""
        return self.source.report

    @classmethod
    def from_config_file(
        cls, config_file: str | Path, weights: str | Path | None = None, opts: Sequence[str] = (), **kwargs: object
    ) -> Predictor:
        return cls(load_config(config_file, opts), weights=weights, **kwargs)

    @property
    def backend_description(self) -> str:
        return self.runner.describe()

    def __call__(self, image: ImageInput, *, channels: str = "RGB",
                 score_threshold: float | None = None) -> Instances:
        return self.predict_batch([image], channels=channels, score_threshold=score_threshold)[0]

    def network_input(self, arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The network's input for RGB uint8 ``arrays``: each resized as the config says, normalised,
        padded into one batch; and each one's size inside it. For callers that run ``runner``
        themselves (scoring with extra outputs, benchmarks), so they feed it what ``predict_batch`` does."""
        inputs = [resize_image(a, resized_shape(*a.shape[:2], self.short_edge, self.max_size)) for a in arrays]
        tensors = [torch.from_numpy(np.ascontiguousarray(i.transpose(2, 0, 1))).float() for i in inputs]
        return normalize_and_pad(tensors, self.pixel_mean, self.pixel_std, self.size_divisibility)

    def predict_batch(
        self, images: Sequence[ImageInput], *, channels: str = "RGB", score_threshold: float | None = None
    ) -> list[Instances]:
        """Runs the images as one padded batch (as upstream's ``ImageList``)."""
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score threshold must be within [0, 1], got {threshold}")
        arrays = [as_rgb_array(image, channels=channels) for image in images]
        with torch.inference_mode():
            batch, sizes = self.network_input(arrays)
            # post-processing runs where the logits are (on a GPU: only kept masks come back, as bool)
            class_logits, mask_logits = self.runner(batch)
            padded = (int(batch.shape[-2]), int(batch.shape[-1]))
            return [
                instances_from_outputs(
                    class_logits[i], mask_logits[i],
                    ResizeGeometry(input_size=sizes[i], padded_size=padded, output_size=arrays[i].shape[:2]),
                    self.class_names, score_threshold=threshold, top_k=self.max_detections,
                )
                for i in range(len(arrays))
            ]
