"""The project's one CVAT format module: every CVAT encoding goes through here.

- ``masks``: detector raw-pixel ``mask``, CVAT RLE, cvat-sdk / interactor ``points``.
- ``polygons``: mask -> polygon ("Convert masks to polygons") and polygon -> mask, in the
  pixel-area convention CVAT, Datumaro and pycocotools share (vertices on pixel corners).
- ``payloads``: detector and interactor response items, cvat-sdk auto-annotation shapes.
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
    sdk_mask_points,
    tight_crop,
)
from .payloads import (
    detector_mask_json,
    detector_shape,
    detector_shape_json,
    format_confidence,
    interactor_shape,
    sdk_instance_shapes,
)
from .polygons import (
    instance_polygons,
    mask_to_polygon,
    mask_to_polygons,
    polygon_to_mask,
    polygons_to_mask,
    polygons_to_rle,
)
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
    "detector_mask_json",
    "detector_shape",
    "detector_shape_json",
    "encode_detector_mask",
    "encode_rle",
    "encode_sdk_mask",
    "format_confidence",
    "instance_polygons",
    "interactor_shape",
    "mask_to_polygon",
    "mask_to_polygons",
    "paste_crop",
    "polygon_to_mask",
    "polygons_to_mask",
    "polygons_to_rle",
    "sdk_instance_shapes",
    "sdk_mask_points",
    "tight_crop",
]
