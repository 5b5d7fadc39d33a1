"""The per-image prediction record (``predictions/<image name>.json``).

A record is the durable result of predicting one image and the memory of what the labelling
tool wrote into the annotation file for it:

- ``instances``: every predicted instance (label, score, exclusive box, CVAT RLE of the mask
  inside the box) and what was written for it: ``"mask"`` (that RLE and box), ``"polygon"``
  (``instance_polygons``: one outline per piece, slivers dropped, the pieces grouped in CVAT)
  or nothing, with a ``note`` saying why;
- ``replaced``: shapes written by earlier runs for the same image. They are still recognised as
  the tool's own (and removed) when found unchanged in an input annotation file;
- ``generation`` and ``settings``: which run and which model settings produced it, so a resumed
  run knows whether the record can be reused;
- ``frame``: the fingerprints (sorted shape digests, see ``ownership``) of the image as the
  tool found it in its input file and as it left it, so a later run can tell whether a person
  has touched the frame since (see ``review``). Records written before this existed lack it.

The annotation file is always rebuilt from the input file plus these records, never edited in
place, which is what makes a killed run safe to resume (see ``pipeline``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from mask2former.structures import Instances

from ..cvat import CvatDocument, decode_rle, encode_rle, instance_polygons

FORMAT = "barrier-annotator/prediction"
VERSION = 1

Box = tuple[int, int, int, int]


class RecordError(ValueError):
    """A prediction record file that cannot be used (corrupt, another format, another image)."""


@dataclass(frozen=True)
class ShapeRecord:
    """One shape as written to CVAT XML: a mask (exclusive box + RLE) or a polygon (points)."""

    label: str
    kind: str
    box: Box | None = None
    rle: tuple[int, ...] | None = None
    points: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.kind == "mask":
            return {"label": self.label, "type": "mask", "box": list(self.box or ()), "rle": list(self.rle or ())}
        return {"label": self.label, "type": "polygon", "points": list(self.points or ())}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShapeRecord:
        kind = data["type"]
        if kind == "mask":
            box = tuple(int(v) for v in data["box"])
            if len(box) != 4:
                raise RecordError(f"mask box must have 4 numbers, got {data['box']!r}")
            return cls(str(data["label"]), "mask", box=box, rle=tuple(int(v) for v in data["rle"]))  # type: ignore[arg-type]
        if kind == "polygon":
            return cls(str(data["label"]), "polygon", points=tuple(float(v) for v in data["points"]))
        raise RecordError(f"unknown shape type {kind!r}")


@dataclass(frozen=True)
class InstanceRecord:
    """One predicted instance and the shapes written for it.

    One mask, or the polygons of ``instance_polygons`` (CVAT polygons have a single outline; the
    pieces of a rail split by a post are written as one group). No shape: see ``note``.
    """

    label: str
    score: float
    box: Box
    rle: tuple[int, ...]
    shapes: tuple[ShapeRecord, ...] = ()
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"label": self.label, "score": self.score, "box": list(self.box),
                                "rle": list(self.rle)}
        if not self.shapes:
            data["written"] = None
            data["note"] = self.note
        elif self.shapes[0].kind == "mask":
            data["written"] = "mask"
        else:
            data["written"] = "polygon"
            data["polygons"] = [list(shape.points or ()) for shape in self.shapes]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstanceRecord:
        label, box = str(data["label"]), tuple(int(v) for v in data["box"])
        if len(box) != 4:
            raise RecordError(f"instance box must have 4 numbers, got {data['box']!r}")
        rle = tuple(int(v) for v in data["rle"])
        written = data.get("written")
        if written == "mask":
            shapes: tuple[ShapeRecord, ...] = (ShapeRecord(label, "mask", box=box, rle=rle),)  # type: ignore[arg-type]
        elif written == "polygon":
            shapes = tuple(ShapeRecord(label, "polygon", points=tuple(float(v) for v in points))
                           for points in data["polygons"])
        elif written is None:
            shapes = ()
        else:
            raise RecordError(f"unknown written shape {written!r}")
        return cls(label, float(data["score"]), box, rle, shapes, data.get("note"))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PredictionRecord:
    """Everything the tool knows about one image after predicting it."""

    image: str
    width: int
    height: int
    generation: str
    settings: Mapping[str, Any]
    instances: tuple[InstanceRecord, ...] = ()
    replaced: tuple[ShapeRecord, ...] = field(default=())
    input_shapes: tuple[str, ...] | None = None
    output_shapes: tuple[str, ...] | None = None

    @property
    def shapes(self) -> list[ShapeRecord]:
        """The shapes this record puts into the annotation file, in score order."""
        return [shape for instance in self.instances for shape in instance.shapes]

    @property
    def owned(self) -> list[ShapeRecord]:
        """Every shape the tool ever wrote for this image: current ones and replaced ones."""
        return [*self.shapes, *self.replaced]

    def usable_for(self, generation: str, settings: Mapping[str, Any], width: int, height: int) -> bool:
        """True when a resumed run may keep this record instead of predicting the image again."""
        return (self.generation == generation and dict(self.settings) == dict(settings)
                and (self.width, self.height) == (width, height))

    def with_frame(self, input_shapes: Sequence[str], output_shapes: Sequence[str]) -> PredictionRecord:
        """This record with the image's fingerprints before and after the tool wrote it."""
        return replace(self, input_shapes=tuple(sorted(input_shapes)), output_shapes=tuple(sorted(output_shapes)))

    def to_json(self) -> dict[str, Any]:
        frame = None if self.input_shapes is None or self.output_shapes is None else {
            "input": list(self.input_shapes), "output": list(self.output_shapes)}
        return {
            "format": FORMAT,
            "version": VERSION,
            "image": {"name": self.image, "width": self.width, "height": self.height},
            "generation": self.generation,
            "settings": dict(self.settings),
            "instances": [instance.to_json() for instance in self.instances],
            "replaced": [shape.to_json() for shape in self.replaced],
            "frame": frame,
        }

    @classmethod
    def from_json(cls, data: Any) -> PredictionRecord:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise RecordError("not a barrier-annotator prediction record")
        if data.get("version") != VERSION:
            raise RecordError(f"record version {data.get('version')!r} is not {VERSION}")
        try:
            image = data["image"]
            return cls(
                image=str(image["name"]),
                width=int(image["width"]),
                height=int(image["height"]),
                generation=str(data["generation"]),
                settings=dict(data["settings"]),
                instances=tuple(InstanceRecord.from_json(item) for item in data["instances"]),
                replaced=tuple(ShapeRecord.from_json(item) for item in data.get("replaced", ())),
                **_frame_from_json(data.get("frame")),
            )
        except (KeyError, TypeError, ValueError) as error:
            if isinstance(error, RecordError):
                raise
            raise RecordError(f"malformed record: {type(error).__name__}: {error}") from None


def _frame_from_json(frame: Any) -> dict[str, tuple[str, ...] | None]:
    if frame is None:
        return {"input_shapes": None, "output_shapes": None}
    if not isinstance(frame, Mapping):
        raise RecordError(f"frame must be an object, got {type(frame).__name__}")
    return {key: tuple(sorted(str(v) for v in frame[name])) for key, name in
            (("input_shapes", "input"), ("output_shapes", "output"))}


# --- which shape each label gets ---------------------------------------------------------------

@dataclass(frozen=True)
class ShapeChoice:
    """What a model class is written as: ``kind`` ``"mask"`` or ``"polygon"``, or nothing (None)
    for the ``reason`` given."""

    kind: str | None
    reason: str = ""

    def to_json(self) -> str:
        """The form records keep in their settings (``"skip: <reason>"`` when nothing is written)."""
        return self.kind or f"skip: {self.reason}"


NOT_A_MODEL_CLASS = ShapeChoice(None, "not a model class")


def shape_kinds(document: CvatDocument, class_names: Sequence[str], polygons: bool) -> dict[str, ShapeChoice]:
    """Per model class, what to write, from the task's labels.

    A label's declared type wins: CVAT expects shapes to match it (a mask on a polygon label is a
    known source of broken tasks), so ``polygons`` only decides for labels of type "any" or
    undeclared ones. Labels the task lacks are skipped (CVAT would drop or refuse them). A file
    that declares no labels at all accepts every class.
    """
    declared = {label.name: label.type for label in document.labels}
    kinds: dict[str, ShapeChoice] = {}
    for name in class_names:
        kind = declared.get(name)
        if declared and name not in declared:
            kinds[name] = ShapeChoice(None, "label not in the task")
        elif kind in (None, "", "any"):
            kinds[name] = ShapeChoice("polygon" if polygons else "mask")
        elif kind in ("mask", "polygon"):
            kinds[name] = ShapeChoice(kind)
        else:
            kinds[name] = ShapeChoice(None, f"the task's label type is {kind!r}")
    return kinds


def quantise_points(points: Iterable[float]) -> tuple[float, ...]:
    """Polygon coordinates as CVAT XML stores them (2 decimals), so record and file agree."""
    return tuple(float(f"{v:.2f}") for v in points)


def build_record(
    name: str,
    instances: Instances,
    *,
    kinds: Mapping[str, ShapeChoice],
    generation: str,
    settings: Mapping[str, Any],
    previous: PredictionRecord | None = None,
) -> PredictionRecord:
    """Encode one image's instances; ``previous`` (an earlier record) becomes ``replaced``.

    Shapes of ``previous`` that the new prediction writes again are not duplicated.
    """
    height, width = instances.image_size
    records = []
    for index, label in enumerate(instances.labels):
        crop, box = instances.mask_crop(index)
        if crop.size == 0 or not crop.any():
            continue
        rle = tuple(encode_rle(crop))
        choice = kinds.get(label, NOT_A_MODEL_CLASS)
        shapes: tuple[ShapeRecord, ...] = ()
        note = None
        if choice.kind == "mask":
            shapes = (ShapeRecord(label, "mask", box=box, rle=rle),)
        elif choice.kind == "polygon":
            shapes = tuple(ShapeRecord(label, "polygon", points=quantise_points(points))
                           for points in instance_polygons(crop, box))
            note = None if shapes else "no polygon CVAT accepts"
        else:
            note = choice.reason
        score = round(float(instances.scores[index]), 6)  # as the JSON keeps it
        records.append(InstanceRecord(label, score, box, rle, shapes, note))
    replaced: list[ShapeRecord] = []
    if previous is not None:
        current = {shape for item in records for shape in item.shapes}
        for shape in previous.owned:
            if shape not in current and shape not in replaced:
                replaced.append(shape)
    return PredictionRecord(name, int(width), int(height), generation, dict(settings), tuple(records),
                            tuple(replaced))


def shape_crop(shape: ShapeRecord) -> np.ndarray:
    """Bool pixels of a mask shape inside its box (raises ValueError on a bad RLE)."""
    if shape.kind != "mask" or shape.box is None or shape.rle is None:
        raise ValueError("not a mask shape")
    x0, y0, x1, y1 = shape.box
    return decode_rle(shape.rle, x1 - x0, y1 - y0)


def record_instances(record: PredictionRecord, class_names: Sequence[str]) -> Instances:
    """Every predicted instance of a record back at full frame, as the model gave it (pictures, reports).

    Instances whose label is not in ``class_names`` raise ValueError: the record is another model's."""
    masks = np.zeros((len(record.instances), record.height, record.width), dtype=bool)
    class_ids = []
    for index, instance in enumerate(record.instances):
        if instance.label not in class_names:
            raise ValueError(f"{record.image}: label {instance.label!r} is not one of {list(class_names)}")
        x0, y0, x1, y1 = instance.box
        masks[index, y0:y1, x0:x1] = decode_rle(instance.rle, x1 - x0, y1 - y0)
        class_ids.append(class_names.index(instance.label))
    scores = np.array([instance.score for instance in record.instances])
    return Instances.from_masks(masks, scores, np.array(class_ids, dtype=np.int64), class_names)

