"""The output folder of a labelling run, and every write into it (each one atomic).

    <output>/annotations.xml            input file + predicted shapes, for CVAT "Upload annotations"
    <output>/predictions/<name>.json    one prediction record per image (see ``records``)
    <output>/visuals/<name>[.png]       overlay picture per image
    <output>/run.json                   the current run generation (``--overwrite`` starts a new one)
    <output>/summary.json               counts of the last finished run

``<name>`` is the CVAT image name with its sub-folders. Every file is written to a temp file
beside it and renamed into place, so a killed run leaves each file either old or new, never
half written; leftover ``.*.tmp`` files are ignored.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mask2former.io import IMAGE_SUFFIXES
from mask2former.utils import atomic_write_json

from ..visualize import save_rgb
from .names import mirrored_file
from .prediction_records import PredictionRecord, RecordError

logger = logging.getLogger(__name__)

RUN_FORMAT = "barrier-annotator/label-run"


class OutputFolder:
    """Paths and atomic writers of one output folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.annotations = root / "annotations.xml"
        self.predictions = root / "predictions"
        self.visuals = root / "visuals"
        self.run_file = root / "run.json"
        self.summary_file = root / "summary.json"

    def prepare(self) -> None:
        for folder in (self.root, self.predictions, self.visuals):
            folder.mkdir(parents=True, exist_ok=True)

    # --- run generation --------------------------------------------------------------------

    def generation(self, *, new: bool) -> str:
        """The run generation records must carry to be reused; ``new`` starts another one.

        Written before any record of the run, so after a crash ``--resume`` continues the run
        that was interrupted (also an interrupted ``--overwrite``) instead of mixing in records
        of the run before it.
        """
        if not new:
            try:
                data = json.loads(self.run_file.read_text(encoding="utf-8"))
                if data.get("format") == RUN_FORMAT and isinstance(data.get("generation"), str):
                    return data["generation"]
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as error:
                logger.warning("%s is unreadable (%s): starting a new run generation", self.run_file, error)
        generation = uuid.uuid4().hex
        atomic_write_json(self.run_file, {"format": RUN_FORMAT, "generation": generation})
        return generation

    # --- records ---------------------------------------------------------------------------

    def record_path(self, name: str) -> Path:
        return mirrored_file(self.predictions, name, ".json")

    def read_record(self, name: str) -> PredictionRecord | None:
        """The record of image ``name``; None when there is none. Raises RecordError if unusable."""
        path = self.record_path(name)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise RecordError(f"{path}: unreadable: {error}") from None
        try:
            record = PredictionRecord.from_json(data)
        except RecordError as error:
            raise RecordError(f"{path}: {error}") from None
        if record.image != name:
            raise RecordError(f"{path}: belongs to image {record.image!r}, not {name!r}")
        return record

    def write_record(self, record: PredictionRecord) -> Path:
        path = self.record_path(record.image)
        # data fsynced (a record that survives a power cut is complete), the rename not: a record
        # lost with it is only predicted again, as annotations.xml is rebuilt from the records
        atomic_write_json(path, record.to_json(), indent=None, sync_directory=False)
        return path

    # --- visuals ---------------------------------------------------------------------------

    def visual_path(self, name: str) -> Path:
        """Same name and format as the image where OpenCV can write it, else ``<name>.png``."""
        suffix = Path(name).suffix.lower()
        return mirrored_file(self.visuals, name, "" if suffix in IMAGE_SUFFIXES else ".png")

    def write_visual(self, name: str, rgb: np.ndarray) -> Path:
        return save_rgb(self.visual_path(name), rgb)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_file, summary)
