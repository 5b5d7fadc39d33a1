"""CVAT for images 1.1 XML: safe reading, lossless editing, atomic writing.

The document wraps the parsed ElementTree and edits it in place, so a read -> modify -> write
round trip keeps everything this module does not model (``<meta>``, other shape kinds, tracks,
attributes, comments, element and attribute order). Comments outside the root element and
the original XML declaration are not kept; whitespace of added/removed elements is adjusted.

Untrusted input: files are parsed with defusedxml and any DTD is refused (CVAT never writes
one), which refuses entity bombs and external entities (XXE) before anything is expanded.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO
from xml.etree import ElementTree as ET

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from mask2former.utils import atomic_write_with

from .masks import check_crop, encode_rle, tight_crop
from .xml_shapes import (
    SHAPE_TAGS,
    CvatXmlError,
    LabelInfo,
    MaskShape,
    PolygonShape,
    Shape,
    format_points,
    int_attribute,
    required,
    shape_view,
)

DEFAULT_COLORS = ("#fa3253", "#33ddff", "#ff6a4d", "#b83df5", "#3d3df5", "#34d1b7", "#fafa37", "#24b353")


@dataclass(frozen=True)
class LabelSpec:
    """A label for :meth:`CvatDocument.new`; ``type`` "mask" or "any" accepts mask shapes."""

    name: str
    type: str = "mask"
    color: str | None = None


def _indent(depth: int) -> str:
    return "\n" + "  " * depth


def _insert(parent: ET.Element, child: ET.Element, depth: int, after: ET.Element | None = None) -> None:
    """Insert ``child`` (at nesting ``depth``) after ``after`` (default: last), keeping CVAT's layout."""
    if len(parent) == 0:
        parent.text = _indent(depth)
        child.tail = _indent(depth - 1)
        parent.append(child)
        return
    prev = parent[-1] if after is None else after
    child.tail = prev.tail
    prev.tail = _indent(depth)
    if prev is parent[-1]:
        parent.append(child)
    else:
        parent.insert(list(parent).index(prev) + 1, child)


def _remove(parent: ET.Element, child: ET.Element) -> None:
    children = list(parent)
    index = children.index(child)
    if index == len(children) - 1:
        if index > 0:
            children[index - 1].tail = child.tail
        else:
            parent.text = None
    parent.remove(child)


class ImageEntry:
    """One ``<image>``: its identity, typed views of its shapes, and shape editing."""

    def __init__(self, document: CvatDocument, element: ET.Element) -> None:
        where = f"{document.source}: <image name={element.get('name')!r}>"
        self.document = document
        self.element = element
        self.where = where
        self.id = int_attribute(element, "id", where, minimum=0)
        self.name = required(element, "name", where)
        self.width = int_attribute(element, "width", where, minimum=1)
        self.height = int_attribute(element, "height", where, minimum=1)
        for shape in self.shapes():  # validates every shape once, at load
            if not isinstance(shape, MaskShape):
                continue
            if shape.left + shape.width > self.width or shape.top + shape.height > self.height:
                raise CvatXmlError(shape.where, f"mask box {shape.box} exceeds the "
                                                f"{self.width}x{self.height} image")

    def __repr__(self) -> str:
        return f"ImageEntry(id={self.id}, name={self.name!r}, width={self.width}, height={self.height})"

    def shapes(self) -> list[Shape]:
        """Every annotation child, in file order (masks and polygons as their typed views)."""
        return [shape_view(el, self.where) for el in self.element if el.tag in SHAPE_TAGS]

    def masks(self) -> list[MaskShape]:
        return [MaskShape.from_element(el, self.where) for el in self.element.findall("mask")]

    def polygons(self) -> list[PolygonShape]:
        return [PolygonShape.from_element(el, self.where) for el in self.element.findall("polygon")]

    def add_mask(
        self,
        label: str,
        mask: np.ndarray,
        box: Sequence[int] | None = None,
        *,
        source: str = "semi-auto",
        occluded: bool = False,
        z_order: int = 0,
        group_id: int | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> MaskShape:
        """Add a ``<mask>``: a crop with its exclusive box, or a full-frame mask (box=None).

        Empty masks raise ValueError (CVAT would store an invisible shape): filter them first.
        """
        if box is None:
            full = np.asarray(mask, dtype=bool)
            if full.shape != (self.height, self.width):
                raise ValueError(f"full mask shape {full.shape} != image {(self.height, self.width)}; "
                                 "pass a crop and its box instead")
            cropped = tight_crop(full)
            if cropped is None:
                raise ValueError(f"empty mask for {label!r} on {self.name!r}")
            crop, (x0, y0, x1, y1) = cropped
        else:
            crop, (x0, y0, x1, y1) = check_crop(mask, box)
            if x1 > self.width or y1 > self.height:
                raise ValueError(f"box {tuple(box)} exceeds the {self.width}x{self.height} image")
            if not crop.any():
                raise ValueError(f"empty mask for {label!r} on {self.name!r}")
        return self.add_mask_rle(label, encode_rle(crop), (x0, y0, x1, y1), source=source, occluded=occluded,
                                 z_order=z_order, group_id=group_id, attributes=attributes)

    def add_mask_rle(
        self,
        label: str,
        counts: Sequence[int],
        box: Sequence[int],
        *,
        source: str = "semi-auto",
        occluded: bool = False,
        z_order: int = 0,
        group_id: int | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> MaskShape:
        """Add a ``<mask>`` already run-length encoded (CVAT RLE of the crop inside the exclusive
        ``box``), as prediction records keep it: no decode and re-encode of every pixel. The runs
        are checked (whole numbers that fill the box, at least one pixel set), not decoded."""
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise ValueError(f"box {tuple(box)} is not inside the {self.width}x{self.height} image")
        runs = [int(v) for v in counts]
        if any(v < 0 for v in runs) or sum(runs) != (x1 - x0) * (y1 - y0):
            raise ValueError(f"RLE of {label!r} does not fill its {x1 - x0}x{y1 - y0} box")
        if not any(runs[1::2]):
            raise ValueError(f"empty mask for {label!r} on {self.name!r}")
        element = self._new_shape("mask", label, source, occluded)
        element.set("rle", ", ".join(map(str, runs)))
        for key, value in (("left", x0), ("top", y0), ("width", x1 - x0), ("height", y1 - y0)):
            element.set(key, str(value))
        self._finish_shape(element, z_order, group_id, attributes)
        return MaskShape.from_element(element, self.where)

    def add_polygon(
        self,
        label: str,
        points: Sequence[float],
        *,
        source: str = "semi-auto",
        occluded: bool = False,
        z_order: int = 0,
        group_id: int | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> PolygonShape:
        """Add a ``<polygon>`` from flat ``[x0, y0, x1, y1, ...]`` (written with 2 decimals)."""
        coords = np.asarray(points, dtype=np.float64)
        if coords.ndim != 1 or coords.size < 6 or coords.size % 2 or not np.isfinite(coords).all():
            raise ValueError(f"a polygon needs an even number (>= 6) of finite coordinates, "
                             f"got {coords.size}")
        element = self._new_shape("polygon", label, source, occluded)
        element.set("points", format_points(coords))
        self._finish_shape(element, z_order, group_id, attributes)
        return PolygonShape.from_element(element, self.where)

    def remove_shapes(self, predicate: Callable[[Shape], bool]) -> int:
        """Remove the annotation children for which ``predicate(view)`` is true; returns the count.

        Lets a tool replace only the shapes it added before. Note that CVAT sets
        ``source="file"`` on everything it imports, so ``source`` alone cannot tell them apart
        after a trip through CVAT.
        """
        doomed = [shape.element for shape in self.shapes() if predicate(shape)]
        for element in doomed:
            _remove(self.element, element)
        return len(doomed)

    def _new_shape(self, kind: str, label: str, source: str, occluded: bool) -> ET.Element:
        known = self.document.label_names()
        if known and label not in known:
            raise ValueError(f"label {label!r} is not declared in <meta> (known: {sorted(known)})")
        return ET.Element(kind, {"label": label, "source": source, "occluded": "1" if occluded else "0"})

    def _finish_shape(self, element: ET.Element, z_order: int, group_id: int | None,
                      attributes: Mapping[str, Any] | None) -> None:
        element.set("z_order", str(int(z_order)))
        if group_id:
            element.set("group_id", str(int(group_id)))
        for name, value in (attributes or {}).items():
            attribute = ET.Element("attribute", {"name": str(name)})
            attribute.text = str(value)
            _insert(element, attribute, 3)
        _insert(self.element, element, 2)


class CvatDocument:
    """A CVAT for images 1.1 annotation file, kept as its ElementTree."""

    def __init__(self, root: ET.Element, source: str = "<memory>") -> None:
        if root.tag != "annotations":
            raise CvatXmlError(source, f"root element is <{root.tag}>, expected <annotations>")
        self.root = root
        self.source = source
        self._images = [ImageEntry(self, el) for el in root.findall("image")]
        self._by_name: dict[str, ImageEntry] = {}
        for image in self._images:
            if image.name in self._by_name:
                raise CvatXmlError(source, f"image name {image.name!r} appears twice")
            self._by_name[image.name] = image
        self._labels: list[LabelInfo] | None = None

    # --- reading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CvatDocument:
        """Parse a file; anything unsafe or malformed raises :class:`CvatXmlError`."""
        with open(path, "rb") as handle:
            return cls._parse(handle, os.fspath(path))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> CvatDocument:
        return cls._parse(io.BytesIO(data), source)

    @classmethod
    def _parse(cls, stream: BinaryIO, source: str) -> CvatDocument:
        builder = ET.TreeBuilder(insert_comments=True, insert_pis=True)
        parser = DefusedXMLParser(target=builder, forbid_dtd=True, forbid_entities=True,
                                  forbid_external=True)
        try:
            while chunk := stream.read(1 << 20):
                parser.feed(chunk)
            root = parser.close()
        except DefusedXmlException as err:
            raise CvatXmlError(source, f"refused unsafe XML ({type(err).__name__}): {err}") from None
        except ET.ParseError as err:
            raise CvatXmlError(source, f"malformed XML: {err}") from None
        return cls(root, source)

    @property
    def version(self) -> str | None:
        element = self.root.find("version")
        return None if element is None or element.text is None else element.text.strip()

    @property
    def images(self) -> list[ImageEntry]:
        """Every ``<image>``, in file order (also those without shapes)."""
        return list(self._images)

    @property
    def track_count(self) -> int:
        """``<track>`` elements: only a "CVAT for video 1.1" export has them."""
        return len(self.root.findall("track"))

    def image_export_problem(self) -> str | None:
        """Why this file cannot be a task's "CVAT for images 1.1" export, or None.

        That export lists every frame of the task as an ``<image>``, annotated or not. A "CVAT for
        video 1.1" export has none: its shapes are ``<track>`` elements, frames by number.
        """
        if self._images:
            return None
        how = ("export the task again with format 'CVAT for images 1.1' (Actions > Export task dataset, "
               "'Save images' ticked) and use that annotations.xml")
        if self.track_count:
            return (f"{self.source}: this is a 'CVAT for video 1.1' export ({self.track_count} <track> "
                    f"element(s), no <image>): {how}")
        return (f"{self.source}: no <image> element, so nothing to label: a 'CVAT for images 1.1' export "
                f"lists every frame of the task, even unannotated ones (a 'CVAT for video 1.1' export of a "
                f"task without tracks looks like this file): {how}")

    def image(self, name: str) -> ImageEntry:
        """The image CVAT would match by ``name``; KeyError if absent."""
        return self._by_name[name]

    @property
    def labels(self) -> list[LabelInfo]:
        """Labels of ``<meta>``'s task, job or project (whichever the export has)."""
        if self._labels is None:
            self._labels = list(self._read_labels())
        return list(self._labels)

    def label_names(self) -> set[str]:
        return {label.name for label in self.labels}

    def _read_labels(self) -> Iterable[LabelInfo]:
        for owner in ("task", "job", "project"):
            for label in self.root.findall(f"meta/{owner}/labels/label"):
                name = label.findtext("name")
                if not name:
                    raise CvatXmlError(self.source, f"a <{owner}> label in <meta> has no <name>")
                yield LabelInfo(
                    name=name,
                    type=label.findtext("type"),
                    color=label.findtext("color"),
                    parent=label.findtext("parent"),
                    attributes=tuple(a.findtext("name") or "" for a in label.findall("attributes/attribute")),
                )

    # --- editing ---------------------------------------------------------------------------

    def add_image(self, name: str, width: int, height: int, image_id: int | None = None) -> ImageEntry:
        """Append an ``<image>`` after the last one; ids default to max + 1."""
        if name in self._by_name:
            raise ValueError(f"image {name!r} already exists (CVAT matches images by name)")
        if image_id is None:
            image_id = max((image.id for image in self._images), default=-1) + 1
        element = ET.Element("image", {"id": str(int(image_id)), "name": name,
                                       "width": str(int(width)), "height": str(int(height))})
        last = self._images[-1].element if self._images else None
        _insert(self.root, element, 1, after=last)
        entry = ImageEntry(self, element)
        self._images.append(entry)
        self._by_name[name] = entry
        return entry

    def remove_shapes(self, predicate: Callable[[Shape], bool]) -> int:
        """:meth:`ImageEntry.remove_shapes` over every image."""
        return sum(image.remove_shapes(predicate) for image in self._images)

    # --- building --------------------------------------------------------------------------

    @classmethod
    def new(cls, labels: Sequence[LabelSpec | str], task_name: str = "barrier-annotator") -> CvatDocument:
        """An empty CVAT for images 1.1 document: version, meta/task with ``labels``, no images."""
        root = ET.Element("annotations")
        ET.SubElement(root, "version").text = "1.1"
        task = ET.SubElement(ET.SubElement(root, "meta"), "task")
        for key, value in (("id", "0"), ("name", task_name), ("mode", "annotation"), ("overlap", "0")):
            ET.SubElement(task, key).text = value
        labels_element = ET.SubElement(task, "labels")
        for index, spec in enumerate(labels):
            spec = LabelSpec(spec) if isinstance(spec, str) else spec
            label = ET.SubElement(labels_element, "label")
            ET.SubElement(label, "name").text = spec.name
            ET.SubElement(label, "color").text = spec.color or DEFAULT_COLORS[index % len(DEFAULT_COLORS)]
            ET.SubElement(label, "type").text = spec.type
            ET.SubElement(label, "attributes")
        ET.indent(root)
        return cls(root, source="<new>")

    # --- writing ---------------------------------------------------------------------------

    def write(self, handle: BinaryIO) -> None:
        """UTF-8 with an XML declaration; non-ASCII names are written as-is."""
        ET.ElementTree(self.root).write(handle, encoding="utf-8", xml_declaration=True)
        handle.write(b"\n")

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a crash or an error mid-write leaves the previous file intact."""
        atomic_write_with(path, self.write)
