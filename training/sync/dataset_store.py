"""The versioned local dataset that CVAT work is pulled into.

Layout under ``<workdir>/dataset``::

    manifest.json                      the commit point (written atomically, last)
    images/task_<id>/<frame name>      original frames, never deleted
    sources/job_<id>/<content>.xml     each job's annotations as exported (every version kept)
    annotations/round_<n>/{train,val}.xml   the merged CVAT 1.1 files a round trains/validates on

The manifest holds, per image, its task, job, frame name, content sha256, annotation sha256, split
and the rounds it first appeared / last changed in; per job the ``updated_date`` last pulled; per
round what changed and the counts. An image is in ``val`` when ``int(sha256, 16) % 100 <
val_percent``: a frame never changes split, so earlier rounds' val images stay val and every
comparison between models is made on a set that only grows. Pulling is idempotent: a job whose
``updated_date`` did not change is not downloaded, and a download whose content did not change
makes no round.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from mask2former.cvat import CvatDocument, LabelSpec
from mask2former.utils import atomic_open, atomic_write_json

from .cvat_client import JobInfo
from .export import check_export

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
DEFAULT_VAL_PERCENT = 20
TRAINABLE_KINDS = ("mask", "polygon")


class DatasetError(RuntimeError):
    """The dataset folder is inconsistent with the request (e.g. another val percentage)."""


def split_of(sha256: str, val_percent: int) -> str:
    """``val`` or ``train``, from the image content alone."""
    return "val" if int(sha256, 16) % 100 < val_percent else "train"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def annotation_digest(shapes: Iterable[ET.Element], width: int, height: int) -> str:
    """Hash of an image's annotation elements (the export's dates and ids do not count)."""
    digest = hashlib.sha256(f"{width}x{height}".encode())
    for element in shapes:
        clone = copy.copy(element)  # shallow: only the tail (layout whitespace) is dropped
        clone.tail = None
        digest.update(ET.tostring(clone, encoding="utf-8"))
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestResult:
    job_id: int
    images: int
    new: int
    changed: int
    removed: int
    bytes: int

    @property
    def content_changed(self) -> bool:
        return bool(self.new or self.changed or self.removed)


class DatasetStore:
    """Read and update ``<root>/manifest.json`` and the files it names."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.path = self.root / MANIFEST
        self._manifest: dict[str, Any] | None = None

    # ------------------------------------------------------------------ manifest
    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            if self.path.is_file():
                self._manifest = json.loads(self.path.read_text(encoding="utf-8"))
                if self._manifest.get("version") != MANIFEST_VERSION:
                    raise DatasetError(f"{self.path}: manifest version {self._manifest.get('version')!r}, "
                                       f"expected {MANIFEST_VERSION}")
            else:
                self._manifest = {"version": MANIFEST_VERSION, "created": now(), "val_percent": None,
                                  "images": {}, "jobs": {}, "rounds": [], "pending": {}}
        return self._manifest

    def save(self) -> None:
        self.manifest["updated"] = now()
        atomic_write_json(self.path, self.manifest)

    def val_percent(self, requested: int | None) -> int:
        """The manifest's split percentage; a different one would move images between splits."""
        stored = self.manifest.get("val_percent")
        if stored is not None and requested is not None and requested != stored:
            raise DatasetError(f"--val-percent {requested}: this dataset was split with {stored}%; changing it "
                               f"would move images between train and val. Use another --workdir for a new split")
        value = stored if stored is not None else (DEFAULT_VAL_PERCENT if requested is None else requested)
        if not 0 <= value <= 100:
            raise DatasetError(f"--val-percent must be within 0..100, got {value}")
        return int(value)

    # ------------------------------------------------------------------ pulling
    def changed_jobs(self, jobs: Sequence[JobInfo]) -> list[tuple[JobInfo, str]]:
        """Jobs never pulled (``new``) or updated in CVAT since (``updated``)."""
        known = self.manifest["jobs"]
        changed = []
        for job in jobs:
            entry = known.get(str(job.id))
            if entry is None:
                changed.append((job, "new"))
            elif entry["updated_date"] != job.updated_date:
                changed.append((job, "updated"))
        return changed

    def ingest(self, job: JobInfo, export_zip: Path, val_percent: int) -> IngestResult:
        """Add one job's checked export: images first, its annotations file, then the manifest."""
        manifest = self.manifest
        manifest["val_percent"] = val_percent
        contents = check_export(export_zip, verify_crc=False)
        images = manifest["images"]
        seen: dict[str, dict[str, Any]] = {}
        new = changed = written = 0
        with zipfile.ZipFile(export_zip) as archive:
            for image in contents.document.images:
                data = archive.read(contents.members[image.name])
                key = f"task_{job.task_id}/{image.name}"
                sha = hashlib.sha256(data).hexdigest()
                target = self.root / "images" / key
                if not target.is_file() or images.get(key, {}).get("sha256") != sha:
                    with atomic_open(target, "wb") as handle:
                        handle.write(data)
                    written += len(data)
                entry = {"task_id": job.task_id, "job_id": job.id, "frame": image.name, "file": f"images/{key}",
                         "sha256": sha, "width": image.width, "height": image.height,
                         "annotations_sha256": annotation_digest((s.element for s in image.shapes()),
                                                                 image.width, image.height),
                         "split": split_of(sha, val_percent)}
                old = images.get(key)
                if old is None:
                    new += 1
                    entry.update(first_round=None, round=None)
                elif (old["sha256"], old["annotations_sha256"]) != (entry["sha256"], entry["annotations_sha256"]):
                    changed += 1
                    entry.update(first_round=old["first_round"], round=None)
                else:
                    entry.update(first_round=old["first_round"], round=old["round"])
                seen[key] = entry
        gone = [key for key, entry in images.items() if entry["job_id"] == job.id and key not in seen]
        source = self._write_source(job, contents.document, seen)
        for key in gone:
            del images[key]
        images.update(seen)
        manifest["jobs"][str(job.id)] = {
            "task_id": job.task_id, "task_name": job.task_name, "project_id": job.project_id,
            "stage": job.stage, "state": job.state, "updated_date": job.updated_date, "source": source,
            "images": len(seen), "pulled": now()}
        result = IngestResult(job.id, len(seen), new, changed, len(gone), written)
        if result.content_changed:
            pending = manifest["pending"]
            previous = pending.get(str(job.id), {"new": 0, "changed": 0, "removed": 0})
            pending[str(job.id)] = {"new": previous["new"] + new, "changed": previous["changed"] + changed,
                                    "removed": previous["removed"] + len(gone), "task_id": job.task_id,
                                    "task_name": job.task_name, "updated_date": job.updated_date}
        self.save()
        return result

    def _write_source(self, job: JobInfo, document: CvatDocument, entries: dict[str, dict[str, Any]]) -> str:
        digest = hashlib.sha256(json.dumps(sorted((k, e["sha256"], e["annotations_sha256"])
                                                  for k, e in entries.items())).encode()).hexdigest()
        relative = f"sources/job_{job.id}/{digest[:16]}.xml"
        if not (self.root / relative).is_file():
            document.save(self.root / relative)
        return relative

    # ------------------------------------------------------------------ rounds
    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.manifest["rounds"]

    def latest_round(self) -> dict[str, Any] | None:
        return self.rounds[-1] if self.rounds else None

    def has_pending_changes(self) -> bool:
        return bool(self.manifest["pending"])

    def seal_round(self) -> dict[str, Any] | None:
        """Freeze the pending changes as round n+1 (merged train/val XML, counts); None if none."""
        manifest = self.manifest
        if not manifest["pending"]:
            return None
        number = len(self.rounds) + 1
        for entry in manifest["images"].values():
            if entry["round"] is None:
                entry["round"] = number
                if entry["first_round"] is None:
                    entry["first_round"] = number
        folder = f"annotations/round_{number}"
        counts = self._write_round_files(folder, number)
        pending = manifest["pending"]
        tasks: dict[str, dict[str, Any]] = {}
        for job in pending.values():
            task = tasks.setdefault(str(job["task_id"]), {"name": job["task_name"], "updated_date": ""})
            task["updated_date"] = max(task["updated_date"], job["updated_date"])
        record = {
            "round": number, "sealed": now(),
            "jobs": {job_id: {k: v for k, v in job.items() if k != "task_name"} for job_id, job in pending.items()},
            "tasks": tasks,
            "new_images": sum(j["new"] for j in pending.values()),
            "changed_images": sum(j["changed"] for j in pending.values()),
            "removed_images": sum(j["removed"] for j in pending.values()),
            "train_xml": f"{folder}/train.xml", "val_xml": f"{folder}/val.xml",
            **counts, "concluded": False, "run": None, "decision": None}
        self.rounds.append(record)
        manifest["pending"] = {}
        self.save()
        logger.info("dataset round %d: %d new, %d changed, %d removed images; train %d, val %d", number,
                    record["new_images"], record["changed_images"], record["removed_images"],
                    counts["images"]["train"], counts["images"]["val"])
        return record

    def _write_round_files(self, folder: str, number: int) -> dict[str, Any]:
        images = self.manifest["images"]
        jobs = self.manifest["jobs"]
        sources: dict[str, CvatDocument] = {}

        def source(job_id: int) -> CvatDocument:
            relative = jobs[str(job_id)]["source"]
            if relative not in sources:
                sources[relative] = CvatDocument.load(self.root / relative)
            return sources[relative]

        labels: dict[str, LabelSpec] = {}
        for key in sorted(images):
            for label in source(images[key]["job_id"]).labels:
                labels.setdefault(label.name, LabelSpec(label.name, label.type or "any", label.color))
        documents = {split: CvatDocument.new(list(labels.values()), task_name=f"barrier sync round {number} {split}")
                     for split in ("train", "val")}
        instances: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
        other: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
        for index, key in enumerate(sorted(images)):
            entry = images[key]
            original = source(entry["job_id"]).image(entry["frame"])
            split = entry["split"]
            copy_entry = documents[split].add_image(key, original.width, original.height, image_id=index)
            for shape in original.shapes():
                copy_entry.element.append(copy.deepcopy(shape.element))
                (instances if shape.kind in TRAINABLE_KINDS else other)[split][
                    shape.label if shape.kind in TRAINABLE_KINDS else shape.kind] += 1
        for split, document in documents.items():
            ET.indent(document.root)
            document.save(self.root / folder / f"{split}.xml")
        return {"images": {split: len(doc.images) for split, doc in documents.items()},
                "instances": {split: dict(sorted(c.items())) for split, c in instances.items()},
                "other_shapes": {split: dict(sorted(c.items())) for split, c in other.items()}}

    def conclude_round(self, number: int, run_id: str, decision: dict[str, Any]) -> None:
        record = self.rounds[number - 1]
        record.update(concluded=True, run=run_id, decision=decision)
        self.save()

    def round_files(self, record: dict[str, Any]) -> tuple[Path, Path, Path]:
        """(train xml, val xml, image root) of a round."""
        return self.root / record["train_xml"], self.root / record["val_xml"], self.root / "images"
