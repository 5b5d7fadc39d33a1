"""The network with one extra output for diversity: the pixel decoder's coarsest feature map.

Every backend returns ``(pred_logits, pred_masks)``; frame embeddings need an intermediate feature,
which the deployed graph does not expose. So the scorer runs the same network with a third output,
the pixel decoder's 1/32-scale features (after the deformable encoder: what the decoder queries
attend to first), from which :mod:`.embedding` pools a vector on the frame's own cells:

- torch: the model's modules called in the same order as ``MaskFormer.forward``, with the runner's
  precision (autocast) and deformable sampling;
- OpenVINO: that three-output network converted once per weights/config, cached beside the
  predictor's graph (its own key), compiled per input size as the predictor's runner does. The
  extra output adds no computation; the predictor's own graph is not compiled by the scorer.

The features come out whole (a few hundred KB per frame); pooling only the frame's cells keeps an
embedding independent of how the batch was padded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mask2former.backends.torch_backend import TorchRunner
from mask2former.modeling.meta_arch import MaskFormer
from mask2former.modeling.pixel_decoder.ms_deform_attn import sampling_mode
from mask2former.predictor import Predictor

logger = logging.getLogger(__name__)

SCORING_GRAPH = "scoring-features-v1"
"""Part of the OpenVINO cache key of the three-output graph; bump when its outputs change."""
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class FeatureNetwork(nn.Module):
    """``batch -> (pred_logits, pred_masks, features)``: ``MaskFormer.forward`` plus the pixel
    decoder's coarsest multi-scale feature map ``(B, C, H/32, W/32)``."""

    def __init__(self, model: MaskFormer) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        head = self.model.sem_seg_head
        mask_features, multi_scale = head.pixel_decoder(self.model.backbone(batch))
        outputs = head.predictor(multi_scale, mask_features)
        return outputs["pred_logits"], outputs["pred_masks"], multi_scale[0]


class FeatureRunner(Protocol):
    description: str

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class TorchFeatureRunner:
    """The torch runner's model, precision and sampling, with the feature output."""

    def __init__(self, runner: TorchRunner) -> None:
        self.device = runner.device
        self.precision = runner.precision
        self.fused_sampling = runner.fused_sampling
        self.network = FeatureNetwork(runner.model).eval()
        self.description = runner.describe()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_DTYPES[self.precision])

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mode = "fused" if self.fused_sampling else "reference"
        with torch.inference_mode(), self._autocast(), sampling_mode(mode):
            logits, masks, features = self.network(batch.to(self.device))
        return logits.float(), masks.float(), features.float()


class OpenVinoFeatureRunner:
    """The three-output graph under the predictor runner's precision, threads and compiled cache."""

    def __init__(self, predictor: Predictor) -> None:
        from mask2former.backends.ir_cache import DIGESTS, ConvertedModelCache, cache_key
        from mask2former.backends.openvino_backend import OpenVinoRunner

        base: Any = predictor.runner
        cfg = predictor.source.cfg
        cache = ConvertedModelCache(cfg.DEPLOY.CACHE_DIR or None)
        sampling = "fused-op" if base.fused_sampling else "graph"
        plain_key = cache_key(predictor.source.digest(memo=cache.root / DIGESTS), cfg, sampling=sampling)
        key = hashlib.sha256(f"{plain_key}/{SCORING_GRAPH}".encode()).hexdigest()[:32]
        converted = cache.load(key)
        if converted is None:
            logger.info("converting the scoring network (with its feature output) to OpenVINO; cached in %s",
                        cache.root)
            converted = convert_feature_network(predictor.source.torch_model(), fused_sampling=base.fused_sampling)
            cache.store(key, converted, {"graph": SCORING_GRAPH})
        self.runner = OpenVinoRunner(converted, precision=base.precision, threads=base.threads,
                                     compiled_cache_dir=base.compiled_cache_dir)
        self.description = self.runner.describe()

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        request = self.runner.compiled_for(tuple(array.shape)).create_infer_request()
        request.infer({0: array})
        return tuple(torch.from_numpy(np.array(request.get_output_tensor(i).data, dtype=np.float32))
                     for i in range(3))  # type: ignore[return-value]


def convert_feature_network(model: MaskFormer, example_size: tuple[int, int] = (256, 320), *,
                            fused_sampling: bool = False) -> Any:
    """:class:`FeatureNetwork` traced into an OpenVINO model with dynamic batch, height and width."""
    from mask2former.backends.openvino_runtime import import_openvino

    ov = import_openvino()
    extensions = []
    if fused_sampling:
        from mask2former.backends.openvino_fused_op import conversion_extensions

        extensions = conversion_extensions()
    network = FeatureNetwork(model).eval()
    with torch.no_grad(), sampling_mode("fused-op" if fused_sampling else "reference"):
        converted = ov.convert_model(network, example_input=torch.zeros(1, 3, *example_size),
                                     input=[ov.PartialShape([-1, 3, -1, -1])], extension=extensions or None)
    for output, name in zip(converted.outputs, ("pred_logits", "pred_masks", "features"), strict=True):
        output.get_tensor().set_names({name})
    return converted


def feature_runner(predictor: Predictor) -> FeatureRunner:
    """The feature-output runner matching the predictor's backend."""
    if predictor.runner.name == "torch":
        return TorchFeatureRunner(predictor.runner)  # type: ignore[arg-type]
    if predictor.runner.name == "openvino":
        return OpenVinoFeatureRunner(predictor)
    raise ValueError(f"no scoring network for backend {predictor.runner.name!r}")
