"""The project's one CVAT format module: every CVAT encoding goes through here.

- ``masks``: detector raw-pixel ``mask``, CVAT RLE, cvat-sdk / interactor ``points``.
- ``polygons``: mask -> polygon ("Convert masks to polygons") and polygon -> mask.
- ``payloads``: detector and interactor response items.
- ``xml_document`` / ``xml_shapes``: CVAT for images 1.1 XML, read safely, edited losslessly,
  saved atomically.
"""

from .masks import (
    Box,
    decode_detector_mask,
    decode_rle,
    decode_sdk_mask,
    encode_detector_mask,
    encode_rle,
    encode_sdk_mask,
    paste_crop,
    tight_crop,
)
from .payloads import detector_shape, interactor_shape
from .polygons import mask_to_polygon, polygon_to_mask
from .xml_document import CvatDocument, ImageEntry, LabelSpec
from .xml_shapes import CvatXmlError, LabelInfo, MaskShape, PolygonShape, Shape

__all__ = [
    "Box",
    "CvatDocument",
    "CvatXmlError",
    "ImageEntry",
    "LabelInfo",
    "LabelSpec",
    "MaskShape",
    "PolygonShape",
    "Shape",
    "decode_detector_mask",
    "decode_rle",
    "decode_sdk_mask",
    "detector_shape",
    "encode_detector_mask",
    "encode_rle",
    "encode_sdk_mask",
    "interactor_shape",
    "mask_to_polygon",
    "paste_crop",
    "polygon_to_mask",
    "tight_crop",
]
