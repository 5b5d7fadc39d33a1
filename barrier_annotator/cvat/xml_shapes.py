"""Typed, read-only views over elements of a CVAT for images 1.1 XML tree.

A view parses its element once (bad values raise :class:`CvatXmlError` with the file and the
image) and keeps the element, which stays the source of truth: nothing is re-serialised
from a view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.etree import ElementTree as ET

import numpy as np

from .masks import Box, decode_rle, paste_crop
from .polygons import polygon_to_mask

SHAPE_TAGS = frozenset(
    {"box", "polygon", "polyline", "points", "mask", "ellipse", "cuboid", "skeleton", "tag"}
)
"""Children of ``<image>`` that are annotations (``tag`` is a frame-level label)."""


class CvatXmlError(ValueError):
    """A CVAT XML file that is unsafe, malformed or not what CVAT writes; names file and cause."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


def required(element: ET.Element, name: str, where: str) -> str:
    value = element.get(name)
    if value is None:
        raise CvatXmlError(where, f"<{element.tag}> lacks the required attribute {name!r}")
    return value


def int_attribute(element: ET.Element, name: str, where: str, minimum: int | None = None,
                  default: int | None = None) -> int:
    raw = element.get(name)
    if raw is None:
        if default is not None:
            return default
        raise CvatXmlError(where, f"<{element.tag}> lacks the required attribute {name!r}")
    try:
        value = int(raw)
    except ValueError:
        raise CvatXmlError(where, f"<{element.tag}> {name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise CvatXmlError(where, f"<{element.tag}> {name}={value} is below {minimum}")
    return value


def parse_points(raw: str, where: str) -> list[float]:
    """``"x0,y0;x1,y1;..."`` -> flat floats."""
    try:
        coords = [float(v) for pair in raw.split(";") for v in _pair(pair)]
    except ValueError as err:
        raise CvatXmlError(where, f"bad points {raw[:60]!r}: {err}") from None
    if not all(np.isfinite(coords)):
        raise CvatXmlError(where, f"non-finite points {raw[:60]!r}")
    return coords


def _pair(text: str) -> list[str]:
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not 'x,y'")
    return parts


def format_points(points: list[float] | np.ndarray) -> str:
    """Flat coordinates -> CVAT's ``"x0,y0;x1,y1"`` with 2 decimals, as CVAT itself writes."""
    coords = np.asarray(points, dtype=np.float64)
    return ";".join(f"{x:.2f},{y:.2f}" for x, y in coords.reshape(-1, 2).tolist())


@dataclass(frozen=True)
class LabelInfo:
    """A label declared in ``<meta>`` (task, job or project labels)."""

    name: str
    type: str | None
    color: str | None
    parent: str | None = None
    attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shape:
    """Any annotation child of ``<image>``; the fields every kind shares."""

    element: ET.Element = field(repr=False, compare=False)
    where: str = field(repr=False, compare=False)
    kind: str
    label: str
    source: str | None
    occluded: bool
    z_order: int
    group_id: int | None
    attributes: dict[str, str]

    @staticmethod
    def common(element: ET.Element, where: str) -> dict:
        label = required(element, "label", where)
        here = f"{where}: <{element.tag} label={label!r}>"
        group = element.get("group_id")
        return {
            "element": element,
            "where": here,
            "kind": element.tag,
            "label": label,
            "source": element.get("source"),
            "occluded": element.get("occluded", "0") == "1",
            "z_order": int_attribute(element, "z_order", here, default=0),
            "group_id": None if group is None else int_attribute(element, "group_id", here),
            "attributes": {
                a.get("name", ""): a.text or "" for a in element.findall("attribute")
            },
        }


@dataclass(frozen=True)
class MaskShape(Shape):
    """``<mask>``: CVAT RLE inside the box ``left, top, width, height``."""

    left: int = 0
    top: int = 0
    width: int = 0
    height: int = 0
    counts: tuple[int, ...] = ()

    @property
    def box(self) -> Box:
        """Exclusive ``(x0, y0, x1, y1)``, like ``Instances.mask_crop``."""
        return self.left, self.top, self.left + self.width, self.top + self.height

    def crop(self) -> np.ndarray:
        """Bool pixels inside :attr:`box`; a bad RLE raises :class:`CvatXmlError`."""
        try:
            return decode_rle(self.counts, self.width, self.height)
        except ValueError as err:
            raise CvatXmlError(self.where, str(err)) from None

    def to_mask(self, height: int, width: int) -> np.ndarray:
        """Frame-size bool mask (frame size = the image's ``height, width``)."""
        try:
            return paste_crop(self.crop(), self.box, height, width)
        except CvatXmlError:
            raise
        except ValueError as err:
            raise CvatXmlError(self.where, str(err)) from None

    @classmethod
    def from_element(cls, element: ET.Element, where: str) -> MaskShape:
        common = cls.common(element, where)
        raw = required(element, "rle", common["where"])
        try:
            counts = tuple(int(v) for v in raw.split(","))
        except ValueError:
            raise CvatXmlError(common["where"], f"rle {raw[:60]!r} is not a list of integers") from None
        return cls(
            **common,
            left=int_attribute(element, "left", common["where"], minimum=0),
            top=int_attribute(element, "top", common["where"], minimum=0),
            width=int_attribute(element, "width", common["where"], minimum=1),
            height=int_attribute(element, "height", common["where"], minimum=1),
            counts=counts,
        )


@dataclass(frozen=True)
class PolygonShape(Shape):
    """``<polygon>`` with flat frame coordinates."""

    points: tuple[float, ...] = ()

    def to_mask(self, height: int, width: int) -> np.ndarray:
        """Frame-size bool mask, pixel-area convention as CVAT rasterises it (see ``polygons.py``)."""
        try:
            return polygon_to_mask(self.points, height, width)
        except ValueError as err:
            raise CvatXmlError(self.where, str(err)) from None

    @classmethod
    def from_element(cls, element: ET.Element, where: str) -> PolygonShape:
        common = cls.common(element, where)
        points = parse_points(required(element, "points", common["where"]), common["where"])
        if len(points) < 6:
            raise CvatXmlError(common["where"], f"a polygon needs >= 3 points, got {len(points) // 2}")
        return cls(**common, points=tuple(points))


def shape_view(element: ET.Element, where: str) -> Shape:
    """The most specific view of an annotation element."""
    if element.tag == "mask":
        return MaskShape.from_element(element, where)
    if element.tag == "polygon":
        return PolygonShape.from_element(element, where)
    return Shape(**Shape.common(element, where))
