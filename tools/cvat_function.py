"""Native cvat-sdk auto-annotation function for the barrier model (no Nuclio, runs where cvat-cli runs):

    cvat-cli --server-host HOST --auth USER task auto-annotate TASK_ID \\
        --function-module barrier_annotator.tools.cvat_function \\
        -p config=str:configs/safetybarrier/instance-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml \\
        -p weights=str:model_final.pth [-p device=str:cuda] [-p shape=str:polygon] \\
        [--conf-threshold 0.5] [--conv-mask-to-poly]

cvat-sdk refuses to start unless every label type in the function's spec fits the task's label
of that name: a "mask" spec label takes task labels "mask" and "any" (or "polygon" and "any"
with ``--conv-mask-to-poly``), a "polygon" one takes "polygon" and "any". ``-p shape`` picks
the spec's types so that the task's labels fit (see :func:`parse_shape_types`); nothing can
put polygons on a task label of type "mask" (the README has the whole table).

Polygons follow the product's one rule (``barrier_annotator.cvat.polygons.instance_polygons``): one
polygon per piece of an instance, slivers dropped, the pieces of one instance sharing a group.

The model work is the same :class:`barrier_annotator.serving.ModelHandler` the Nuclio function uses;
this module only adapts it to the SDK's ``spec`` / ``detect(context, image)`` interface.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import cvat_sdk.auto_annotation as cvataa
import PIL.Image

from barrier_annotator.cvat import sdk_instance_shapes
from barrier_annotator.serving import ModelHandler
from mask2former.command_line import environment_opts
from mask2former.io import to_rgb_array

SHAPE_TYPES = ("mask", "polygon")


def parse_shape_types(value: str, class_names: Sequence[str]) -> dict[str, str]:
    """``-p shape=str:VALUE`` -> the spec's type per label.

    ``mask`` (default): mask labels, polygons only when cvat-cli gets ``--conv-mask-to-poly``.
    ``polygon``: polygon labels, always polygons. ``LABEL=TYPE`` items, comma-separated, set one
    label each (for tasks mixing mask and polygon labels); a bare type among them is the default
    of the labels not named: ``polygon,rail_top=mask``.
    """
    default, per_label = "mask", {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, sep, kind = (part.strip() for part in item.partition("="))
        if not sep:
            name, kind = "", name
        if kind not in SHAPE_TYPES:
            raise ValueError(f"shape {item!r}: the type must be one of {', '.join(SHAPE_TYPES)}")
        if not name:
            default = kind
        elif name not in class_names:
            raise ValueError(f"shape {item!r}: the model has no label {name!r} (labels: {', '.join(class_names)})")
        else:
            per_label[name] = kind
    return {name: per_label.get(name, default) for name in class_names}


class BarrierFunction:
    """A cvat-sdk detection function: label ids are the model's class indices.

    ``shape_types`` gives each label's spec type (default all "mask"). ``group_base`` is the first
    group id given to a multi-piece polygon instance; ids then count up over the whole run, so the
    pieces of different instances never share one. By default it is a random number above 2^20:
    CVAT stores the ids it is sent, and people's groups in the task have small ids, which would
    otherwise merge with ours on the same frame.
    """

    def __init__(self, handler: ModelHandler, shape_types: Mapping[str, str] | None = None,
                 group_base: int | None = None) -> None:
        self.handler = handler
        self.shape_types = {name: (shape_types or {}).get(name, "mask") for name in handler.class_names}
        if any(kind not in SHAPE_TYPES for kind in self.shape_types.values()):
            raise ValueError(f"label types must be among {SHAPE_TYPES}, got {self.shape_types}")
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, index, type=self.shape_types[name])
                    for index, name in enumerate(handler.class_names)]
        )
        self.next_group = group_base if group_base is not None else random.SystemRandom().randrange(1 << 20, 1 << 30)

    def detect(self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image) -> list:
        """The instances at or above ``context.conf_threshold`` (None: the model's default): masks
        (SDK RLE) for mask labels, grouped polygons for polygon labels and whenever the user asked
        CVAT to convert masks to polygons."""
        threshold = self.handler.default_threshold if context.conf_threshold is None else context.conf_threshold
        instances = self.handler.predict(to_rgb_array(image), float(threshold))
        shapes: list = []
        for index, (label, class_id) in enumerate(zip(instances.labels, instances.class_ids.tolist(), strict=True)):
            as_polygons = self.shape_types[label] == "polygon" or bool(context.conv_mask_to_poly)
            crop, box = instances.mask_crop(index)
            written = sdk_instance_shapes(class_id, crop, box, as_polygons=as_polygons, group=self.next_group)
            if any(getattr(shape, "group", None) for shape in written):
                self.next_group += 1
            shapes.extend(written)
        return shapes


def create(config: str, weights: str = "", device: str = "auto", backend: str = "",
           shape: str = "mask") -> BarrierFunction:
    """cvat-cli's ``-p`` parameters: ``config`` and ``weights`` (file, URL or model-zoo name; empty:
    the config's MODEL.WEIGHTS), ``device`` (cpu, cuda, auto), ``backend`` (auto, torch, openvino;
    empty: ``$BARRIER_BACKEND``, else the config's), ``shape`` (the spec's label types, see
    :func:`parse_shape_types`)."""
    handler = ModelHandler.from_files(config, weights or None, device=device, backend=backend or None,
                                      opts=environment_opts())
    return BarrierFunction(handler, parse_shape_types(shape, handler.class_names))
