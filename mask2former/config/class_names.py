"""Class names of a model, found the way detectron2 finds them: from the test dataset's name.

detectron2 keeps class names in dataset metadata, not in the config; a model built for
``safetybarrier_val`` predicts the four barrier classes in this order.
"""

from __future__ import annotations

import logging

from fvcore.common.config import CfgNode

logger = logging.getLogger(__name__)

BARRIER_CLASSES = ("rail_top", "rail_mid", "toeboard", "vertical_post")

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# dataset-name prefix -> class names, in the model's output order
_KNOWN_PREFIXES = {"safetybarrier": BARRIER_CLASSES, "coco_2017": COCO_CLASSES}


def class_names_for(cfg: CfgNode) -> tuple[str, ...]:
    """Explicit ``DATASETS.CLASS_NAMES``, else the known test dataset's classes, else ``class_<i>``."""
    count = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    names: tuple[str, ...] | None = tuple(cfg.DATASETS.CLASS_NAMES) or None
    if names is None:
        for dataset in (*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN):
            for prefix, known in _KNOWN_PREFIXES.items():
                if dataset.startswith(prefix) and len(known) == count:
                    names = known
                    break
            if names is not None:
                break
    if names is None:
        logger.warning("no class names for datasets %s; using class_0..class_%d (set DATASETS.CLASS_NAMES)",
                       list(cfg.DATASETS.TEST), count - 1)
        return tuple(f"class_{i}" for i in range(count))
    if len(names) != count:
        raise ValueError(f"DATASETS.CLASS_NAMES has {len(names)} names but NUM_CLASSES is {count}")
    return names
