"""The review rule: a re-run never undoes what a person did to a frame since the tool wrote it.

A frame's *fingerprint* is the sorted list of its shapes' digests (``ownership.shape_identity``):
kind, label, pixels or vertices, occluded, non-default attribute values; not source, z-order,
group or shape order, which CVAT changes on its own. A prediction record keeps the fingerprint
of the frame as the tool found it in its input file and as the tool left it. When the tool meets
the frame again:

- ``same-input``: the input is the one the record was made from (a resumed or repeated run):
  the record applies as before;
- ``untouched``: the input is what the tool wrote (exported again, nobody changed the frame): the
  frame is refreshed, as if it were new;
- ``reviewed``: anything else: a person deleted, moved, repainted or relabelled a shape, flagged
  it or changed an attribute, or added one. The frame is left exactly as the input has it and
  nothing is added there, unless the user asks (``--relabel-reviewed``);
- ``unknown``: no record in this output folder (or ``--records-from``), and the frame holds
  shapes uploaded from a file (``source="file"``: what CVAT makes of every shape in an uploaded
  annotation file, this tool's included). The tool cannot tell its own earlier output from
  someone's import, so it leaves the frame alone too (same flag to label it anyway);
- ``new``: no record and no uploaded shape: labelled, every shape kept (as on a first run);
- ``legacy``: a record written before fingerprints existed: the frame is treated as untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..cvat import ImageEntry
from .prediction_records import PredictionRecord

SAME_INPUT, UNTOUCHED, REVIEWED, UNKNOWN, NEW, LEGACY = (
    "same-input", "untouched", "reviewed", "unknown", "new", "legacy")
LEFT_ALONE = frozenset({REVIEWED, UNKNOWN})
"""States whose frames a run leaves exactly as they are, unless told to relabel them."""

UPLOADED_SOURCE = "file"


def frame_state(record: PredictionRecord | None, fingerprint: Sequence[str], image: ImageEntry) -> str:
    """Which of the states above frame ``image`` (with this input ``fingerprint``) is in."""
    if record is None:
        return UNKNOWN if any(shape.source == UPLOADED_SOURCE for shape in image.shapes()) else NEW
    if record.input_shapes is None or record.output_shapes is None:
        return LEGACY
    current = tuple(sorted(fingerprint))
    if current == record.input_shapes:
        return SAME_INPUT
    if current == record.output_shapes:
        return UNTOUCHED
    return REVIEWED
