"""Which shapes in an annotation file did the labelling tool write? Recognise them, replace them.

``source`` cannot answer: CVAT stores every shape of an uploaded file as ``source="file"``. So
the prediction records keep the exact shapes the tool wrote, and a shape in an input file counts
as the tool's own only while it is *unchanged*:

- same kind and label, and the same pixels (masks: the tight box and bit pattern, whatever box
  CVAT stored them in) or the same vertices to CVAT's 2 decimals (polygons);
- not marked occluded, and every attribute at the label's default value (CVAT writes default
  attributes into each exported shape; the tool writes none).

A shape a person moved, repainted, relabelled, flagged occluded or gave an attribute no longer
matches and is kept as human work. z-order, group and source are ignored: CVAT changes them
without anyone editing the shape.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from xml.etree import ElementTree as ET

import numpy as np

from ..cvat import CvatDocument, CvatXmlError, MaskShape, PolygonShape, Shape, tight_crop
from .records import PredictionRecord, ShapeRecord, shape_crop

logger = logging.getLogger(__name__)

ShapeKey = tuple
SOURCE = "semi-auto"
"""``source`` of written shapes: a model proposed them, a person is expected to check them."""


def _mask_key(label: str, crop: np.ndarray, box: tuple[int, int, int, int]) -> ShapeKey | None:
    tight = tight_crop(crop)
    if tight is None:
        return None
    pixels, (x0, y0, x1, y1) = tight
    digest = hashlib.blake2b(np.packbits(pixels).tobytes(), digest_size=16).hexdigest()
    return ("mask", label, box[0] + x0, box[1] + y0, box[0] + x1, box[1] + y1, digest)


def _polygon_key(label: str, points: Iterable[float]) -> ShapeKey:
    return ("polygon", label, *(round(float(v) * 100) for v in points))


def record_key(shape: ShapeRecord) -> ShapeKey | None:
    """Identity of a recorded shape (None for a mask with no pixel, which is never written)."""
    if shape.kind == "mask":
        return _mask_key(shape.label, shape_crop(shape), shape.box)  # type: ignore[arg-type]
    return _polygon_key(shape.label, shape.points or ())


def xml_key(shape: Shape, defaults: Mapping[str, Mapping[str, str]]) -> ShapeKey | None:
    """Identity of a shape read from a file; None when it cannot be one of the tool's shapes."""
    if shape.occluded:
        return None
    label_defaults = defaults.get(shape.label, {})
    if any(label_defaults.get(name) != value for name, value in shape.attributes.items()):
        return None
    try:
        if isinstance(shape, MaskShape):
            return _mask_key(shape.label, shape.crop(), shape.box)
        if isinstance(shape, PolygonShape):
            return _polygon_key(shape.label, shape.points)
    except CvatXmlError:
        return None  # broken human shape: certainly not ours, leave it alone
    return None


def attribute_defaults(document: CvatDocument) -> dict[str, dict[str, str]]:
    """``{label: {attribute: default value}}`` from ``<meta>`` (task, job or project labels)."""
    defaults: dict[str, dict[str, str]] = {}
    root: ET.Element = document.root
    for owner in ("task", "job", "project"):
        for label in root.findall(f"meta/{owner}/labels/label"):
            values = defaults.setdefault(label.findtext("name") or "", {})
            for attribute in label.findall("attributes/attribute"):
                values[attribute.findtext("name") or ""] = attribute.findtext("default_value") or ""
    return defaults


class AnnotationMerger:
    """Applies prediction records to a loaded input document, in place.

    ``apply`` removes every shape of the image that matches one the record owns (the tool's
    earlier shapes, unedited) and appends the record's shapes. Applying a newer record for the
    same image later gives the same result as applying only the newer one, because a newer
    record owns everything the older one did.
    """

    def __init__(self, document: CvatDocument) -> None:
        self.document = document
        self._defaults = attribute_defaults(document)
        self.input_shapes = {image.name: len(image.shapes()) for image in document.images}
        self.written: dict[str, list[ShapeRecord]] = {}
        self.failed: list[tuple[str, str]] = []

    def apply(self, record: PredictionRecord, *, add: bool = True) -> int:
        """Put ``record`` into its image; returns how many existing shapes it replaced."""
        image = self.document.image(record.image)
        owned = {key for shape in record.owned if (key := record_key(shape)) is not None}
        removed = 0
        if owned:
            removed = image.remove_shapes(lambda shape: self._is_owned(shape, owned))
        written: list[ShapeRecord] = []
        next_group = 0  # found only when needed: it parses every shape of the image
        for instance in record.instances if add else ():
            group = None
            if len(instance.shapes) > 1:  # the parts of one instance share a new group
                next_group = next_group or 1 + max((s.group_id or 0 for s in image.shapes()), default=0)
                group, next_group = next_group, next_group + 1
            for shape in instance.shapes:
                try:
                    if shape.kind == "mask":
                        image.add_mask(shape.label, shape_crop(shape), shape.box, source=SOURCE)
                    else:
                        image.add_polygon(shape.label, shape.points or (), source=SOURCE, group_id=group)
                except ValueError as error:
                    logger.warning("%s: %s shape not written: %s", record.image, shape.label, error)
                    self.failed.append((record.image, str(error)))
                    continue
                written.append(shape)
        self.written[record.image] = written
        return removed

    def _is_owned(self, shape: Shape, owned: set[ShapeKey]) -> bool:
        # Cheap checks first (kind, label, a recorded mask's tight box inside this mask's box):
        # decoding every person-made mask of the image would cost more than the prediction's shapes.
        if not any(key[0] == shape.kind and key[1] == shape.label for key in owned):
            return False
        if isinstance(shape, MaskShape):
            x0, y0, x1, y1 = shape.box
            if not any(key[0] == "mask" and key[1] == shape.label and x0 <= key[2] and y0 <= key[3]
                       and key[4] <= x1 and key[5] <= y1 for key in owned):
                return False
        return xml_key(shape, self._defaults) in owned

    def kept_input_shapes(self, name: str) -> int:
        """Shapes of the input file still in the image (human work) after the records went in."""
        return len(self.document.image(name).shapes()) - len(self.written.get(name, ()))
