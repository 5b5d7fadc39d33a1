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

The same identity, extended to every shape kind and to the occluded flag and non-default
attributes, gives each shape a *digest*; the sorted digests of a frame are its fingerprint,
which the review rule compares (see ``review``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from xml.etree import ElementTree as ET

import numpy as np

from ..cvat import CvatDocument, CvatXmlError, MaskShape, PolygonShape, Shape, tight_crop
from .prediction_records import PredictionRecord, ShapeRecord, shape_crop

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


_IGNORED_XML_ATTRIBUTES = frozenset({"label", "source", "occluded", "z_order", "group_id"})


def _number(text: str) -> str:
    """Numbers as CVAT writes them (2 decimals), so "1" and "1.00" read alike; other text as is."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.2f}" if np.isfinite(value) else text


def _element_content(element: ET.Element, *, top: bool = False) -> tuple:
    """Tag, normalised XML attributes (points to 2 decimals), text and children, order-free.
    ``top``: a shape's own ``<attribute>`` children are left out (the digest has them apart)."""
    attributes = []
    for name, value in element.attrib.items():
        if name in _IGNORED_XML_ATTRIBUTES:
            continue
        if name == "points":
            value = ";".join(",".join(_number(v) for v in pair.split(",")) for pair in value.split(";"))
        attributes.append((name, _number(value)))
    children = sorted(repr(_element_content(child)) for child in element
                      if isinstance(child.tag, str) and not (top and child.tag == "attribute"))
    return element.tag, tuple(sorted(attributes)), (element.text or "").strip(), tuple(children)


def _digest(content: tuple) -> str:
    return hashlib.blake2b(repr(content).encode("utf-8"), digest_size=12).hexdigest()


def shape_identity(shape: Shape, defaults: Mapping[str, Mapping[str, str]]) -> tuple[str, ShapeKey | None]:
    """``(digest, key)`` of a shape of an input file, its pixels decoded once.

    The digest covers everything a person can change: kind, label, pixels or vertices, occluded,
    attribute values other than the label's default (CVAT writes those into every exported
    shape). Not source, z-order or group: CVAT changes them on its own. The key is
    :func:`xml_key`'s: what the shape is matched by when it may be one of the tool's own.
    """
    label_defaults = defaults.get(shape.label, {})
    attributes = tuple(sorted((name, value) for name, value in shape.attributes.items()
                              if label_defaults.get(name) != value))
    geometry: tuple | None = None
    try:
        if isinstance(shape, MaskShape):
            geometry = _mask_key(shape.label, shape.crop(), shape.box)
        elif isinstance(shape, PolygonShape):
            geometry = _polygon_key(shape.label, shape.points)
    except CvatXmlError:
        geometry = None
    key = geometry if geometry is not None and not shape.occluded and not attributes else None
    if geometry is None:  # every other kind (box, points, skeleton, tag, ...) or a broken mask
        geometry = (shape.label, *_element_content(shape.element, top=True))
    return _digest((shape.occluded, attributes, geometry)), key


def record_shape_digest(shape: ShapeRecord) -> str:
    """The digest (:func:`shape_identity`) a shape the tool writes has after a trip through CVAT."""
    return _digest((False, (), record_key(shape)))


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
        self._inputs: dict[str, list[tuple[str, ShapeKey | None]]] = {}

    # --- what the input file holds ---------------------------------------------------------

    def input_state(self, name: str) -> list[tuple[str, ShapeKey | None]]:
        """:func:`shape_identity` of every shape the input file has for image ``name``, taken
        before any record changes the image (``apply`` takes it first)."""
        state = self._inputs.get(name)
        if state is None:
            state = [shape_identity(shape, self._defaults) for shape in self.document.image(name).shapes()]
            self._inputs[name] = state
        return state

    def input_fingerprint(self, name: str) -> tuple[str, ...]:
        """Sorted shape digests of the image as the input file has it."""
        return tuple(sorted(digest for digest, _ in self.input_state(name)))

    def output_fingerprint(self, record: PredictionRecord) -> tuple[str, ...]:
        """The fingerprint image ``record.image`` has once ``apply(record)`` ran on the input file:
        the input shapes the record does not own plus the record's shapes."""
        owned = {key for shape in record.owned if (key := record_key(shape)) is not None}
        kept = [digest for digest, key in self.input_state(record.image) if key is None or key not in owned]
        return tuple(sorted(kept + [record_shape_digest(shape) for shape in record.shapes]))

    # --- editing ---------------------------------------------------------------------------

    def apply(self, record: PredictionRecord, *, add: bool = True) -> int:
        """Put ``record`` into its image; returns how many existing shapes it replaced."""
        image = self.document.image(record.image)
        self.input_state(record.image)
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
                        image.add_mask_rle(shape.label, shape.rle or (), shape.box or (0, 0, 0, 0), source=SOURCE)
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
