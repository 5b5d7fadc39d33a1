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
from .checkpoint import LoadReport, load_checkpoint
from .config import load_config
from .config.build import build_model
from .data_catalog import class_names_for
from .io import decode_image as _decode
from .io import ensure_rgb_uint8, read_image
from .modeling.meta_arch import MaskFormer
from .postprocess import ResizeGeometry, instances_from_outputs
from .preprocess import normalize_and_pad, resize_image, resized_shape
from .structures import Instances
from .weights import resolve_weights

logger = logging.getLogger(__name__)

ImageInput = np.ndarray | str | Path | bytes


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    return device


class Predictor:
    """Mask2Former inference with the product's conventions (score threshold, max detections)."""

    def __init__(
        self,
        cfg: CfgNode,
        *,
        weights: str | Path | None = None,
        model: MaskFormer | None = None,
        device: str | torch.device = "cpu",
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
        self.load_report: LoadReport | None = None
        self.pixel_mean = torch.tensor(list(cfg.MODEL.PIXEL_MEAN), dtype=torch.float32)
        self.pixel_std = torch.tensor(list(cfg.MODEL.PIXEL_STD), dtype=torch.float32)
        self.size_divisibility = int(cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY)
        if len(self.class_names) != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES:
            raise ValueError(f"{len(self.class_names)} class names for a model with "
                             f"{cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} classes")
        spec = cfg.MODEL.WEIGHTS if weights is None else weights
        self.weights_path = resolve_weights(spec) if model is None and spec else None
        self.model = model.eval() if model is not None else None
        self.runner = make_runner(
            backend=backend or cfg.DEPLOY.BACKEND,
            precision=precision or cfg.DEPLOY.PRECISION,
            device=self.device,
            cfg=self.cfg,
            model=self._torch_model,
            weights_digest=self._weights_digest,
        )

    def _torch_model(self) -> MaskFormer:
        """The torch model, built and loaded on first need (a warm OpenVINO cache never needs it)."""
        if self.model is None:
            model = build_model(self.cfg)
            if self.weights_path is not None:
                self.load_report = load_checkpoint(model, self.weights_path)
            else:
                logger.warning("no weights given: the model is randomly initialised")
            self.model = model.eval()
        return self.model

    def _weights_digest(self) -> str:
        from .backends.ir_cache import file_digest, state_dict_digest

        if self.weights_path is not None and self.model is None:
            return file_digest(self.weights_path)
        return state_dict_digest(self._torch_model().state_dict().items())

    @classmethod
    def from_config_file(
        cls, config_file: str | Path, weights: str | Path | None = None, opts: Sequence[str] = (), **kwargs: object
    ) -> Predictor:
        return cls(load_config(config_file, opts), weights=weights, **kwargs)

    @property
    def backend_description(self) -> str:
        return self.runner.describe()

    def load(self, image: ImageInput, *, channels: str = "RGB") -> np.ndarray:
        """Any accepted input -> RGB uint8 array."""
        if isinstance(image, (str, Path)):
            return read_image(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            return _decode(image)
        return ensure_rgb_uint8(image, channels=channels)

    def __call__(self, image: ImageInput, *, channels: str = "RGB",
                 score_threshold: float | None = None) -> Instances:
        return self.predict_batch([image], channels=channels, score_threshold=score_threshold)[0]

    predict = __call__

    def predict_batch(
        self, images: Sequence[ImageInput], *, channels: str = "RGB", score_threshold: float | None = None
    ) -> list[Instances]:
        """Runs the images as one padded batch (as upstream's ``ImageList``)."""
        threshold = self.score_threshold if score_threshold is None else float(score_threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"score threshold must be within [0, 1], got {threshold}")
        arrays = [self.load(image, channels=channels) for image in images]
        inputs = [resize_image(a, resized_shape(*a.shape[:2], self.short_edge, self.max_size)) for a in arrays]
        tensors = [torch.from_numpy(np.ascontiguousarray(i.transpose(2, 0, 1))).float() for i in inputs]
        with torch.inference_mode():
            batch, sizes = normalize_and_pad(tensors, self.pixel_mean, self.pixel_std, self.size_divisibility)
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
