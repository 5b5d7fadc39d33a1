"""The canonical annotation digest of one image: equal for every export of the same annotations.

CVAT re-exports unchanged annotations differently: shapes in another order after an edit that
was undone, ``source="file"`` after an upload, renumbered group ids, ``z_order`` rewritten,
numbers as ``10`` or ``10.00``, a mask's RLE in a box that is larger than its pixels. Hashing
the XML as written turned each of those into a "changed" image and started a training round
for nothing. The digest is taken over what carries information instead:

- per shape: kind, label, ``occluded``, its attributes by name (number attributes compared as
  numbers), and its geometry: a mask's pixels in frame coordinates (tight box + bit pattern,
  whatever box CVAT stored), every other coordinate rounded to CVAT's 2 decimals; other XML
  attributes (track ``keyframe``/``outside``, a box's ``rotation``) as values, nested elements
  (skeleton points) the same way;
- a group (shapes sharing a non-zero ``group_id``) as the set of its members: which shapes
  form one object counts, the number CVAT gave the group does not;
- the image as the set of those, plus its size.

``source``, ``z_order``, ``id`` and the group number are left out: CVAT rewrites them on its
own, and the training data does not depend on them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from xml.etree import ElementTree as ET

import numpy as np

from barrier_annotator.cvat import CvatDocument, CvatXmlError, ImageEntry, MaskShape, tight_crop
from barrier_annotator.cvat.xml_shapes import SHAPE_TAGS

DIGEST_VERSION = 2
"""Version 1 hashed each shape's XML in document order; manifests holding it are migrated."""

IGNORED = frozenset({"source", "z_order", "group_id", "id", "label", "occluded"})
"""XML attributes of a shape not hashed as values (label and occluded are hashed on their own)."""

_ATTRIBUTE_TAG = "attribute"


def attribute_types(document: CvatDocument) -> dict[tuple[str, str], str]:
    """``{(label, attribute): input_type}`` from ``<meta>`` (task, job or project labels)."""
    types: dict[tuple[str, str], str] = {}
    for owner in ("task", "job", "project"):
        for label in document.root.findall(f"meta/{owner}/labels/label"):
            name = label.findtext("name") or ""
            for attribute in label.findall("attributes/attribute"):
                types[(name, attribute.findtext("name") or "")] = (attribute.findtext("input_type") or "").strip()
    return types


def _hundredths(text: str) -> int | str:
    """A number as integer hundredths (``10`` == ``10.00``); anything else stays text."""
    try:
        value = float(text)
    except ValueError:
        return text
    return round(value * 100) if np.isfinite(value) else text


def _points(text: str) -> list[int | str]:
    return [_hundredths(v) for pair in text.split(";") for v in pair.split(",") if v.strip()]


def _attribute_value(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "number":
        try:
            return str(Decimal(value).normalize())
        except InvalidOperation:
            return value
    if kind == "checkbox":
        return value.lower()
    return value


def _mask_geometry(element: ET.Element, where: str) -> list[object]:
    shape = MaskShape.from_element(element, where)
    cropped = tight_crop(shape.crop())
    if cropped is None:
        return ["empty"]
    pixels, (x0, y0, x1, y1) = cropped
    bits = hashlib.sha256(np.packbits(pixels).tobytes()).hexdigest()
    return [shape.left + x0, shape.top + y0, shape.left + x1, shape.top + y1, bits]


def canonical_shape(element: ET.Element, types: dict[tuple[str, str], str], where: str = "<image>") -> list[object]:
    """The information of one annotation element as a JSON-able list (see the module docstring)."""
    label = element.get("label", "")
    attributes = sorted(
        [a.get("name", ""), _attribute_value(types.get((label, a.get("name", "")), ""), a.text or "")]
        for a in element.findall(_ATTRIBUTE_TAG))
    if element.tag == "mask":
        geometry: list[object] = _mask_geometry(element, where)
    else:
        geometry = sorted(
            [key, _points(value) if key == "points" else _hundredths(value)]
            for key, value in element.attrib.items() if key not in IGNORED)
    children = sorted(json.dumps(canonical_shape(child, types, where)) for child in element
                      if child.tag != _ATTRIBUTE_TAG and isinstance(child.tag, str))
    return [element.tag, label, element.get("occluded", "0").strip() in ("1", "true", "True"), attributes,
            geometry, children]


def canonical_image(elements: Iterable[ET.Element], width: int, height: int,
                    types: dict[tuple[str, str], str], where: str = "<image>") -> str:
    """Canonical JSON text of an image's annotations: shapes and groups as sorted sets."""
    loose: list[str] = []
    groups: dict[str, list[str]] = {}
    for element in elements:
        text = json.dumps(canonical_shape(element, types, where))
        group = (element.get("group_id") or "0").strip()
        if group in ("", "0"):
            loose.append(text)
        else:
            groups.setdefault(group, []).append(text)
    entries = sorted(loose + [json.dumps(["group", sorted(members)]) for members in groups.values()])
    return json.dumps([f"{width}x{height}", entries])


def image_digest(image: ImageEntry, types: dict[tuple[str, str], str] | None = None) -> str:
    """sha256 of :func:`canonical_image`; ``types`` from :func:`attribute_types` (read once per document)."""
    if types is None:
        types = attribute_types(image.document)
    elements = [el for el in image.element if el.tag in SHAPE_TAGS]
    try:
        text = canonical_image(elements, image.width, image.height, types, image.where)
    except CvatXmlError:
        raise
    except ValueError as error:  # a malformed value inside a shape: name the image
        raise CvatXmlError(image.where, f"cannot read its annotations: {error}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_digests(document: CvatDocument) -> dict[str, str]:
    """``{image name: digest}`` for every image of a document."""
    types = attribute_types(document)
    return {image.name: image_digest(image, types) for image in document.images}
