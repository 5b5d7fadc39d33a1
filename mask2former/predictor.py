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
from PIL import Image

from .checkpoint import LoadReport, load_checkpoint
from .config import load_config
from .config.build import build_model
from .data_catalog import class_names_for
from .io import decode_image as _decode
from .io import ensure_rgb_uint8, read_image
from .modeling.meta_arch import MaskFormer
from .postprocess import ResizeGeometry, instances_from_outputs
from .structures import Instances
from .weights import resolve_weights

logger = logging.getLogger(__name__)

ImageInput = np.ndarray | str | Path | bytes


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge`` output size, rounding included; ``short_edge`` 0 = keep."""
    if short_edge <= 0:
        return height, width
    scale = short_edge / min(height, width)
    new_h, new_w = (short_edge, scale * width) if height < width else (scale * height, short_edge)
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL bilinear, as detectron2 resizes uint8 images."""
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


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
        if model is None:
            model = build_model(cfg)
            spec = cfg.MODEL.WEIGHTS if weights is None else weights
            if spec:
                self.load_report = load_checkpoint(model, resolve_weights(spec))
            else:
                logger.warning("no weights given: the model is randomly initialised")
        self.model = model.eval()
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a model with {self.model.num_classes} classes")
        self.runner = self._make_runner(backend or cfg.DEPLOY.BACKEND, precision or cfg.DEPLOY.PRECISION)

    @classmethod
    def from_config_file(
        cls, config_file: str | Path, weights: str | Path | None = None, opts: Sequence[str] = (), **kwargs: object
    ) -> Predictor:
        return cls(load_config(config_file, opts), weights=weights, **kwargs)

    def _make_runner(self, backend: str, precision: str):
        from .backends import make_runner

        return make_runner(self.model, backend=backend, precision=precision, device=self.device, cfg=self.cfg)

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
            batch, sizes = self.model.preprocess(tensors)
            class_logits, mask_logits = self.runner(batch)
            class_logits, mask_logits = class_logits.cpu(), mask_logits.cpu()
            padded = (int(batch.shape[-2]), int(batch.shape[-1]))
            return [
                instances_from_outputs(
                    class_logits[i], mask_logits[i],
                    ResizeGeometry(input_size=sizes[i], padded_size=padded, output_size=arrays[i].shape[:2]),
                    self.class_names, score_threshold=threshold, top_k=self.max_detections,
                )
                for i in range(len(arrays))
            ]
