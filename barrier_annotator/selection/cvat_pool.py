"""Frames to choose from in a CVAT project or task: those of jobs that are not completed.

Every annotation job of the selected projects/tasks is listed; a job whose state is "completed"
holds labelled frames (never chosen; diversity keeps away from them), every other job's frames are
candidates, except frames carrying a shape a person drew there (someone is labelling them). Frames
come from the job's "CVAT for images 1.1" export with original images (the sync loop's checked
download) and are kept content-addressed in ``<store>/frames/``; a job is downloaded again only
when its ``updated_date`` changed (``<store>/jobs/job_<id>.json`` remembers what it held).
"""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvat_sdk.core.client import Client

from mask2former.utils import atomic_open, atomic_write_json

from ..cvat import LabelInfo
from ..sync.cvat_client import JobInfo, Selection, select_jobs
from ..sync.export import ExportSettings, check_export, download_job_export
from ..sync.retry import RetryPolicy
from .frames import HUMAN_SOURCE, Frame, FramePool, content_key

logger = logging.getLogger(__name__)

FINISHED_STATE = "completed"


@dataclass
class CvatPool:
    """The pool, the content hashes of frames in completed jobs, the labels the exports declare, and
    the projects the jobs belong to (the new task goes into the same one)."""

    pool: FramePool
    completed_keys: set[str]
    labels: list[LabelInfo]
    projects: set[int]
    jobs: list[JobInfo]


class FrameStore:
    """Frames by content hash under ``root/frames``, and what each pulled job held."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def frame_path(self, key: str, suffix: str) -> Path:
        return self.root / "frames" / key[:2] / f"{key}{suffix.lower()}"

    def job_file(self, job_id: int) -> Path:
        return self.root / "jobs" / f"job_{job_id}.json"

    def cached_job(self, job: JobInfo) -> dict[str, Any] | None:
        try:
            record = json.loads(self.job_file(job.id).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if record.get("updated_date") != job.updated_date:
            return None
        if not all(Path(self.root / item["file"]).is_file() for item in record["frames"]):
            return None
        return record

    def add_job(self, job: JobInfo, archive: Path) -> dict[str, Any]:
        """Store one job's checked export: frames first, then the job's record (the commit point)."""
        contents = check_export(archive, verify_crc=False)
        frames = []
        with zipfile.ZipFile(archive) as opened:
            for image in contents.document.images:
                data = opened.read(contents.members[image.name])
                key = content_key(data)
                target = self.frame_path(key, Path(image.name).suffix)
                if not target.is_file():
                    with atomic_open(target, "wb", sync_directory=False) as handle:
                        handle.write(data)
                frames.append({"name": image.name, "key": key, "file": str(target.relative_to(self.root)),
                               "drawn": any(shape.source == HUMAN_SOURCE for shape in image.shapes())})
        labels = [{"name": label.name, "type": label.type, "color": label.color}
                  for label in contents.document.labels]
        record = {"job_id": job.id, "task_id": job.task_id, "task_name": job.task_name,
                  "project_id": job.project_id, "state": job.state, "stage": job.stage,
                  "updated_date": job.updated_date, "frames": frames, "labels": labels}
        atomic_write_json(self.job_file(job.id), record)
        return record


def cvat_pool(client: Client, selection: Selection, store_root: Path, policy: RetryPolicy, *,
              settings: ExportSettings | None = None, labelled_jobs: bool = True) -> CvatPool:
    """Candidates from the not-completed jobs of ``selection``'s projects/tasks; with ``labelled_jobs``
    the completed jobs' frames are pulled too (as labelled frames), else only listed."""
    store = FrameStore(store_root)
    staging = store_root / "staging"
    jobs = select_jobs(client, Selection(selection.projects, selection.tasks, None, None), policy)
    pool = FramePool([], description="")
    completed_keys: set[str] = set()
    labels: dict[str, LabelInfo] = {}
    projects = {job.project_id for job in jobs if job.project_id is not None}
    wanted = [job for job in jobs if labelled_jobs or job.state != FINISHED_STATE]
    try:
        for number, job in enumerate(wanted, start=1):
            record = store.cached_job(job)
            if record is None:
                logger.info("downloading the frames of job %d (%d of %d; task %d %r, %s)", job.id, number,
                            len(wanted), job.task_id, job.task_name, job.state)
                archive = download_job_export(client, job.id, staging, policy, settings or ExportSettings())
                try:
                    record = store.add_job(job, archive)
                finally:
                    archive.unlink(missing_ok=True)
            for label in record["labels"]:
                labels.setdefault(label["name"], LabelInfo(label["name"], label["type"], label["color"]))
            finished = job.state == FINISHED_STATE
            for item in record["frames"]:
                frame = Frame(f"task {job.task_id}/{item['name']}", store_root / item["file"],
                              {"task_id": job.task_id, "job_id": job.id, "frame": item["name"],
                               "task_name": job.task_name})
                if finished:
                    completed_keys.add(item["key"])
                if finished or item["drawn"]:
                    pool.labelled.append(frame)
                else:
                    pool.candidates.append(frame)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    open_jobs = sum(1 for job in jobs if job.state != FINISHED_STATE)
    pool.description = (f"CVAT {selection.describe().replace('all jobs of ', '')}: {open_jobs} open job(s), "
                        f"{len(jobs) - open_jobs} completed; {len(pool.candidates)} candidate frames")
    return CvatPool(pool, completed_keys, list(labels.values()), projects, jobs)
