"""The versioned local dataset that CVAT work is pulled into.

Layout under ``<workdir>/dataset``::

    manifest.json                      the commit point (written atomically, last)
    images/task_<id>/<frame name>      original frames, never deleted
    sources/job_<id>/<content>.xml     each job's annotations as exported (every version kept)
    annotations/round_<n>/{train,val}.xml   the merged CVAT 1.1 files a round trains/validates on

The manifest holds, per image, its task, job, frame name, content sha256, annotation digest
(canonical: :mod:`.digest`), split and the rounds it first appeared / last changed in; per job the
``updated_date`` last pulled; per round what changed and the counts. An image is in ``val`` when
``int(sha256, 16) % 100 < val_percent``: a frame never changes split, so earlier rounds' val images
stay val and every comparison between models is made on a set that only grows. Pulling is
idempotent: a job whose ``updated_date`` did not change is not downloaded, and a download whose
content did not change makes no round.

A job that left the selection (reopened, moved back a stage, deleted with its task) is
*withdrawn*: its images stay in the manifest, marked with the round that withdrew them, and are
left out of that round's files; the withdrawal is a change (it makes a round, the report names
it). When the job is selected again its images *return* (another change).

Manifest version 1 (before withdrawals) held digests of the XML in document order; it is
upgraded on load by recomputing each image's digest from the job's kept ``sources/`` file, so an
upgrade never makes a round by itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from barrier_annotator.cvat import CvatDocument, CvatXmlError, LabelSpec
from mask2former.utils import atomic_open, atomic_write_json

from .cvat_client import JobInfo
from .digest import DIGEST_VERSION, document_digests
from .export import ExportError, check_export

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1 is upgraded on load
COUNTS = ("new", "changed", "removed", "withdrawn", "returned")
DEFAULT_VAL_PERCENT = 20
TRAINABLE_KINDS = ("mask", "polygon")


class DatasetError(RuntimeError):
    """The dataset folder is inconsistent with the request (e.g. another val percentage)."""


def split_of(sha256: str, val_percent: int) -> str:
    """``val`` or ``train``, from the image content alone."""
    return "val" if int(sha256, 16) % 100 < val_percent else "train"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class IngestResult:
    job_id: int
    images: int
    new: int
    changed: int
    removed: int
    bytes: int
    returned: int = 0  # images of a withdrawn job that are back

    @property
    def content_changed(self) -> bool:
        return bool(self.new or self.changed or self.removed or self.returned)


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
                manifest = json.loads(self.path.read_text(encoding="utf-8"))
                if manifest.get("version") not in READABLE_VERSIONS:
                    raise DatasetError(f"{self.path}: manifest version {manifest.get('version')!r}, "
                                       f"expected one of {READABLE_VERSIONS}")
                if manifest.get("digest_version", 1) != DIGEST_VERSION:
                    self._recompute_digests(manifest)
                manifest["version"] = MANIFEST_VERSION
                self._manifest = manifest
            else:
                self._manifest = {"version": MANIFEST_VERSION, "digest_version": DIGEST_VERSION, "created": now(),
                                  "val_percent": None, "selection": None, "images": {}, "jobs": {}, "rounds": [],
                                  "pending": {}}
        return self._manifest

    def _recompute_digests(self, manifest: dict[str, Any]) -> None:
        """Upgrade older digests from each job's kept source file (in memory; saved with the next change).

        The source holds exactly the annotations the stored digest was taken from, so the
        recomputed digest describes the same content and the upgrade alone never makes a round.
        An image whose source is missing keeps its old digest, marked ``annotations_legacy``: its
        next pull adopts the new digest without counting it as a change.
        """
        images = manifest["images"]
        recomputed = legacy = 0
        for job_id, job in manifest["jobs"].items():
            keys = [key for key, entry in images.items() if str(entry["job_id"]) == job_id]
            try:
                digests = document_digests(CvatDocument.load(self.root / job["source"]))
            except (OSError, CvatXmlError) as error:
                logger.warning("job %s: cannot recompute annotation digests from %s (%s); its next pull "
                               "adopts new digests without counting a change", job_id, job["source"], error)
                digests = {}
            for key in keys:
                entry = images[key]
                if entry["frame"] in digests:
                    entry["annotations_sha256"] = digests[entry["frame"]]
                    entry.pop("annotations_legacy", None)
                    recomputed += 1
                else:
                    entry["annotations_legacy"] = True
                    legacy += 1
        logger.info("%s: annotation digests upgraded to version %d (%d recomputed from sources/, %d legacy)",
                    self.path, DIGEST_VERSION, recomputed, legacy)
        manifest["digest_version"] = DIGEST_VERSION

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

    def selection_changed(self, description: str) -> str | None:
        """The selection this dataset was pulled with, when ``description`` differs from it (else None)."""
        stored = self.manifest.get("selection")
        return stored if stored not in (None, description) else None

    # ------------------------------------------------------------------ pulling
    def changed_jobs(self, jobs: Sequence[JobInfo]) -> list[tuple[JobInfo, str]]:
        """Jobs never pulled (``new``), updated in CVAT since (``updated``) or back after a withdrawal
        (``returned``)."""
        known = self.manifest["jobs"]
        changed = []
        for job in jobs:
            entry = known.get(str(job.id))
            if entry is None:
                changed.append((job, "new"))
            elif entry.get("withdrawn"):
                changed.append((job, "returned"))
            elif entry["updated_date"] != job.updated_date:
                changed.append((job, "updated"))
        return changed

    def departed_jobs(self, jobs: Sequence[JobInfo]) -> list[tuple[int, dict[str, Any]]]:
        """Pulled jobs (not withdrawn yet) missing from the selection ``jobs``: (id, manifest entry)."""
        selected = {job.id for job in jobs}
        return [(int(job_id), entry) for job_id, entry in sorted(self.manifest["jobs"].items(), key=lambda i: int(i[0]))
                if int(job_id) not in selected and not entry.get("withdrawn")]

    def withdraw(self, job_id: int, reason: str) -> int:
        """Take a job's images out of the next round (the manifest keeps them); returns how many."""
        job = self.manifest["jobs"][str(job_id)]
        if job.get("withdrawn"):
            return 0
        keys = [key for key, entry in self.manifest["images"].items()
                if entry["job_id"] == job_id and not entry.get("withdrawn")]
        for key in keys:
            self.manifest["images"][key]["withdrawn"] = {"round": None, "reason": reason}
        job["withdrawn"] = {"round": None, "reason": reason, "noticed": now()}
        self._pend(job_id, job["task_id"], job["task_name"], job["updated_date"], withdrawn=len(keys), reason=reason)
        self.save()
        return len(keys)

    def ingest(self, job: JobInfo, export_zip: Path, val_percent: int) -> IngestResult:
        """Add one job's checked export: images first, its annotations file, then the manifest."""
        manifest = self.manifest
        manifest["val_percent"] = val_percent
        contents = check_export(export_zip, verify_crc=False)
        try:
            digests = document_digests(contents.document)
        except CvatXmlError as error:
            raise ExportError(f"job {job.id}: unusable annotations in its export: {error}") from None
        images = manifest["images"]
        seen: dict[str, dict[str, Any]] = {}
        new = changed = returned = cancelled = written = 0
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
                         "annotations_sha256": digests[image.name], "split": split_of(sha, val_percent)}
                old = images.get(key)
                if old is None:
                    new += 1
                    entry.update(first_round=None, round=None)
                    seen[key] = entry
                    continue
                if _withdrawal_pending(old):
                    cancelled += 1  # withdrawn and back before any round left it out: no change by itself
                if old.get("withdrawn") and not _withdrawal_pending(old):
                    returned += 1
                    entry.update(first_round=old["first_round"], round=None)
                elif self._differs(old, entry):
                    changed += 1
                    entry.update(first_round=old["first_round"], round=None)
                else:
                    entry.update(first_round=old["first_round"], round=old["round"])
                seen[key] = entry
        gone = [key for key, entry in images.items() if entry["job_id"] == job.id and key not in seen]
        cancelled += sum(1 for key in gone if _withdrawal_pending(images[key]))
        source = self._write_source(job, contents.document, seen)
        for key in gone:
            del images[key]
        images.update(seen)
        manifest["jobs"][str(job.id)] = {
            "task_id": job.task_id, "task_name": job.task_name, "project_id": job.project_id,
            "stage": job.stage, "state": job.state, "updated_date": job.updated_date, "source": source,
            "images": len(seen), "pulled": now()}
        result = IngestResult(job.id, len(seen), new, changed, len(gone), written, returned)
        if result.content_changed or cancelled:
            self._pend(job.id, job.task_id, job.task_name, job.updated_date, new=new, changed=changed,
                       removed=len(gone), returned=returned, withdrawn=-cancelled)
        self.save()
        return result

    @staticmethod
    def _differs(old: dict[str, Any], entry: dict[str, Any]) -> bool:
        if old["sha256"] != entry["sha256"]:
            return True
        if old.get("annotations_legacy"):
            logger.info("%s: digest of an older version adopted without comparison", entry["file"])
            return False
        return old["annotations_sha256"] != entry["annotations_sha256"]

    def _pend(self, job_id: int, task_id: int, task_name: str, updated_date: str, *, reason: str | None = None,
              **deltas: int) -> None:
        """Add ``deltas`` to the job's pending counts; an entry whose counts all return to 0 goes."""
        pending = self.manifest["pending"]
        entry = pending.get(str(job_id), {})
        counts = {name: entry.get(name, 0) + deltas.get(name, 0) for name in COUNTS}
        if not any(counts.values()):
            pending.pop(str(job_id), None)
            return
        pending[str(job_id)] = {**counts, "task_id": task_id, "task_name": task_name, "updated_date": updated_date,
                                **({"withdrawn_reason": reason or entry.get("withdrawn_reason")}
                                   if counts["withdrawn"] else {})}

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
            withdrawn = entry.get("withdrawn")
            if withdrawn:
                if withdrawn["round"] is None:
                    withdrawn["round"] = number
            elif entry["round"] is None:
                entry["round"] = number
                if entry["first_round"] is None:
                    entry["first_round"] = number
        for job in manifest["jobs"].values():
            if job.get("withdrawn") and job["withdrawn"]["round"] is None:
                job["withdrawn"]["round"] = number
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
            **{f"{name}_images": sum(j.get(name, 0) for j in pending.values()) for name in COUNTS},
            "withdrawn_jobs": {job_id: {"task_id": job["task_id"], "task_name": job["task_name"],
                                        "images": job["withdrawn"], "reason": job.get("withdrawn_reason")}
                               for job_id, job in pending.items() if job.get("withdrawn")},
            "returned_jobs": {job_id: {"task_id": job["task_id"], "task_name": job["task_name"],
                                       "images": job["returned"]}
                              for job_id, job in pending.items() if job.get("returned")},
            "train_xml": f"{folder}/train.xml", "val_xml": f"{folder}/val.xml",
            **counts, "concluded": False, "run": None, "decision": None}
        self.rounds.append(record)
        manifest["pending"] = {}
        self.save()
        logger.info("dataset round %d: %s; train %d, val %d", number, describe_changes(record),
                    counts["images"]["train"], counts["images"]["val"])
        return record

    def _write_round_files(self, folder: str, number: int) -> dict[str, Any]:
        images, duplicates = unique_content({key: entry for key, entry in self.manifest["images"].items()
                                             if not entry.get("withdrawn")}, self.manifest["jobs"])
        if duplicates:
            logger.info("round %d: %d image(s) labelled in more than one task enter once (the latest labels)",
                        number, len(duplicates))
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
                "duplicate_images": duplicates,
                "instances": {split: dict(sorted(c.items())) for split, c in instances.items()},
                "other_shapes": {split: dict(sorted(c.items())) for split, c in other.items()}}

    def conclude_round(self, number: int, run_id: str, decision: dict[str, Any]) -> None:
        record = self.rounds[number - 1]
        record.update(concluded=True, run=run_id, decision=decision)
        self.save()

    def round_files(self, record: dict[str, Any]) -> tuple[Path, Path, Path]:
        """(train xml, val xml, image root) of a round."""
        return self.root / record["train_xml"], self.root / record["val_xml"], self.root / "images"


def unique_content(images: dict[str, dict[str, Any]], jobs: dict[str, dict[str, Any]]
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """One image per content hash: a frame labelled twice (in its original task and again in a task
    ``barrier-select`` made of it) enters the training set once, with its most recent labels (the
    job pulled last; then the later key, so the choice never depends on dict order). Returns the
    kept images and, for every image left out, the key of the one kept instead. Both copies share
    their split (it is a function of the content), so nothing leaks between train and val."""
    def recency(key: str) -> tuple[str, str]:
        return str(jobs.get(str(images[key]["job_id"]), {}).get("updated_date") or ""), key

    kept: dict[str, str] = {}
    for key in sorted(images, key=recency):
        kept[images[key]["sha256"]] = key  # the most recent one wins
    chosen = set(kept.values())
    left_out = {key: kept[images[key]["sha256"]] for key in sorted(images) if key not in chosen}
    return {key: images[key] for key in sorted(chosen)}, left_out


def _withdrawal_pending(entry: dict[str, Any]) -> bool:
    """Withdrawn since the last round: no round has left the image out yet."""
    withdrawn = entry.get("withdrawn")
    return bool(withdrawn) and withdrawn["round"] is None


def describe_changes(record: dict[str, Any]) -> str:
    """``3 new, 1 changed, 4 withdrawn images`` for a round record (older records lack some counts)."""
    parts = [f"{record.get(f'{name}_images', 0)} {name}" for name in COUNTS if record.get(f"{name}_images")]
    return (", ".join(parts) if parts else "no") + " images"
