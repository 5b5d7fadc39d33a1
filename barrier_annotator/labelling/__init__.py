"""Offline model-assisted labelling of CVAT exports (the ``barrier-label`` command's engine).

- ``names``: CVAT image names -> safe paths (sub-folders kept, traversal refused).
- ``records``: the per-image prediction record, ``predictions/<name>.json``.
- ``ownership``: recognising the tool's earlier shapes in an annotation file and replacing them;
  shape digests and frame fingerprints.
- ``review``: the review rule: frames a person touched since the tool wrote them are left alone.
- ``outputs``: the output folder and its atomic writers.
- ``prefetch``: ordered background loading of the next images.
- ``pipeline``: the run itself, with its crash-safe commit order; ``summary``: its report.
"""

from .names import UnsafeImageNameError, image_file, mirrored_file, relative_parts
from .ownership import AnnotationMerger
from .pipeline import FatalInputError, LabelOptions, label_folder, model_identity
from .prediction_records import PredictionRecord, RecordError, ShapeChoice, ShapeRecord, build_record, shape_kinds
from .summary import LabelSummary

__all__ = [
    "AnnotationMerger",
    "FatalInputError",
    "LabelOptions",
    "LabelSummary",
    "PredictionRecord",
    "RecordError",
    "ShapeChoice",
    "ShapeRecord",
    "UnsafeImageNameError",
    "build_record",
    "image_file",
    "label_folder",
    "mirrored_file",
    "model_identity",
    "relative_parts",
    "shape_kinds",
]
