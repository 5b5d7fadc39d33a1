"""Native cvat-sdk auto-annotation function for the barrier model (no Nuclio, runs where cvat-cli runs):

    cvat-cli --server-host HOST --auth USER task auto-annotate TASK_ID \\
        --function-module tools.cvat_function \\
        -p config=str:configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml \\
        -p weights=str:model_final.pth [-p device=str:cuda] [--conf-threshold 0.5] [--conv-mask-to-poly]

The model work is the same :class:`mask2former.serving.ModelHandler` the Nuclio function uses;
this module only adapts it to the SDK's ``spec`` / ``detect(context, image)`` interface.
"""

from __future__ import annotations

import cvat_sdk.auto_annotation as cvataa
import PIL.Image

from mask2former.io import to_rgb_array
from mask2former.serving import ModelHandler


class BarrierFunction:
    """A cvat-sdk detection function: label ids are the model's class indices, every label a mask."""

    def __init__(self, handler: ModelHandler) -> None:
        self.handler = handler
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, index, type="mask") for index, name in enumerate(handler.class_names)]
        )

    def detect(self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image) -> list:
        """Masks (SDK RLE) of the instances at or above ``context.conf_threshold`` (None: the model's
        default), or polygons when the user asked CVAT to convert masks to polygons."""
        threshold = self.handler.default_threshold if context.conf_threshold is None else context.conf_threshold
        instances = self.handler.predict(to_rgb_array(image), float(threshold))
        return self.handler.sdk_shapes(instances, as_polygons=bool(context.conv_mask_to_poly))


def create(config: str, weights: str = "", device: str = "cpu", backend: str = "") -> BarrierFunction:
    """cvat-cli's ``-p`` parameters: ``config`` and ``weights`` (file, URL or model-zoo name; empty:
    the config's MODEL.WEIGHTS), ``device`` (cpu, cuda, auto), ``backend`` (auto, torch, openvino)."""
    return BarrierFunction(ModelHandler.from_files(config, weights or None, device=device, backend=backend or None))
