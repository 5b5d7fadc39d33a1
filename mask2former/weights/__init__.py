"""The model's weights: where they come from (``sources``: a file, a URL, a model-zoo name, the
download cache) and how a detectron2-format checkpoint is read into a model (``loading``: safe
unpickling, upstream key layout, a report of every key that did not fit)."""

from .loading import (
    CLASS_HEAD_KEYS,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WeightsReport,
    describe_keys,
    load_checkpoint,
    match_state_dict,
    read_checkpoint,
)
from .sources import MODEL_ZOO_URLS, WeightsNotFoundError, download, resolve_weights

__all__ = [
    "CLASS_HEAD_KEYS",
    "MODEL_ZOO_URLS",
    "CheckpointMismatchError",
    "UnsafeCheckpointError",
    "WeightsNotFoundError",
    "WeightsReport",
    "describe_keys",
    "download",
    "load_checkpoint",
    "match_state_dict",
    "read_checkpoint",
    "resolve_weights",
]
