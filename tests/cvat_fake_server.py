"""A CVAT server on loopback for tests: the REST endpoints sync-and-train uses, nothing else.

Every JSON body is built from cvat-sdk's own API models (``Model._from_openapi_data``, the path
the SDK itself takes for server data) and serialised with the SDK's ``to_json``, so the client's
deserialisers validate what they receive exactly as with a real server. Endpoints:

    GET  /api/server/about                     About
    POST /api/auth/login, /api/auth/logout     Token (+ sessionid/csrftoken cookies), RestAuthDetail
    GET  /api/users/self                       User (MetaUser)
    GET  /api/projects/{id}, /api/tasks/{id}   ProjectRead, TaskRead
    GET  /api/jobs?project_id|task_id|stage|state|type|page|page_size   PaginatedJobReadList
    GET, PATCH /api/jobs/{id}                  JobRead; PATCH takes stage and/or state
    DELETE /api/jobs/{id}                      400, as CVAT: only ground-truth jobs can be removed
    DELETE /api/tasks/{id}                     204; the task's jobs go with it
    POST /api/jobs/{id}/dataset/export?format&save_images   202 RqId
    GET  /api/requests/{rq_id}                 Request: "started" on the first poll, then "finished"
    GET  /api/jobs/{id}/dataset/download?rq_id   the job's export zip
    POST/PATCH/HEAD /api/{jobs,tasks}/{id}/annotations/...   "CVAT 1.1" upload (cvat-sdk's TUS
                                               protocol: Upload-Start, create, chunks, Upload-Finish)
    POST /api/tasks                            TaskWriteRequest -> 201 TaskRead (project_id or labels)
    GET  /api/labels?project_id|task_id|job_id PaginatedLabelList
    POST/PATCH/HEAD /api/tasks/{id}/data/...   the task's media: Upload-Start, bundled client files
                                               (multipart, Upload-Multiple), big files by TUS,
                                               Upload-Finish with the DataRequest fields -> 202 RqId;
                                               or one JSON DataRequest with server_files (the share)
    GET  /api/tasks/{id}/data/meta             DataMetaRead (frame names and sizes, in task order)
    GET, PUT, PATCH /api/tasks/{id}/annotations   LabeledData JSON (PATCH ?action=create adds shapes)

Habits of a real CVAT (2.73) that it copies, because code that works against a too-tidy fake
broke against the real one:

- every export lists each image's shapes in another order than the job's previous export did
  (deterministically: by the export's number), as a real re-export after an edit did;
- an upload *replaces* the annotations of the job's (task's) images, and its shapes come back
  with ``source="file"`` whatever the file said;
- updating a job's stage without a state sets the state to "new" (CVAT's JobWriteSerializer);
  every change moves the job's ``updated_date`` forward.
- task creation is CVAT's: a task is created empty, its data is added once (a second upload is
  refused), ``image_quality`` is required, frames are ordered by ``sorting_method``
  (lexicographical by default, ``predefined`` keeps ``upload_file_order``), a client file keeps
  only its base name, the creation runs as a background request ("create:task", "started" on the
  first poll) that fails with a message when a file is not an image; the task then holds one job
  (stage annotation, state new) of all its frames. Shapes sent as JSON keep their ``source``
  (default "manual"), unlike an upload.

Faults are injected per (method, path prefix): an HTTP status, a connection dropped before any
response, a body cut off after half its bytes (with or without Content-Length), or garbage.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import secrets
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy as email_policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit
from xml.etree import ElementTree as ET

from cvat_sdk.api_client import models
from cvat_sdk.api_client.model_utils import to_json
from defusedxml.ElementTree import fromstring as parse_xml

from barrier_annotator.cvat.xml_shapes import SHAPE_TAGS

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def export_zip(annotations_xml: bytes, images: Mapping[str, bytes]) -> bytes:
    """A "CVAT for images 1.1" export with images: annotations.xml + images/<name>."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("annotations.xml", annotations_xml)
        for name, data in images.items():
            archive.writestr(f"images/{name}", data)
    return buffer.getvalue()


def _unpack(export: bytes) -> tuple[ET.Element, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(export)) as archive:
        root = parse_xml(archive.read("annotations.xml"))
        images = {name[len("images/"):]: archive.read(name) for name in archive.namelist()
                  if name.startswith("images/") and not name.endswith("/")}
    return root, images


def _shape_children(image: ET.Element) -> list[ET.Element]:
    return [child for child in image if child.tag in SHAPE_TAGS]


def reordered(export: bytes, number: int) -> bytes:
    """The job's ``number``-th export: each image's shapes shuffled, then rotated by ``number``, so
    that consecutive exports of a job never list an image's shapes (two or more) in the same order."""
    root, images = _unpack(export)
    for image in root.iter("image"):
        shapes = _shape_children(image)
        if len(shapes) < 2:
            continue
        order = list(shapes)
        random.Random(image.get("name")).shuffle(order)
        turn = number % len(order)
        order = order[turn:] + order[:turn]
        for shape in shapes:
            image.remove(shape)
        image.extend(order)
    ET.indent(root)
    return export_zip(ET.tostring(root, encoding="utf-8"), images)


def with_uploaded(export: bytes, uploaded: ET.Element) -> bytes:
    """The export after a "CVAT 1.1" upload: every image's annotations replaced, as ``source="file"``."""
    root, images = _unpack(export)
    by_name = {image.get("name"): image for image in uploaded.iter("image")}
    for image in root.iter("image"):
        for shape in _shape_children(image):
            image.remove(shape)
        for shape in _shape_children(by_name.get(image.get("name"), ET.Element("image"))):
            shape.set("source", "file")
            image.append(shape)
    ET.indent(root)
    return export_zip(ET.tostring(root, encoding="utf-8"), images)


@dataclass
class FakeJob:
    id: int
    task_id: int
    start_frame: int
    stop_frame: int
    export: bytes
    stage: str = "acceptance"
    state: str = "completed"
    updated: datetime = EPOCH
    exports: int = 0  # export requests so far: each one's number orders its shapes


@dataclass
class FakeTask:
    id: int
    name: str
    project_id: int | None
    labels: list[dict[str, Any]] = field(default_factory=list)  # a task outside a project has its own
    image_quality: int = 70
    has_data: bool = False


@dataclass
class Fault:
    method: str
    path: str          # prefix of the request path
    kind: str          # "status", "drop", "truncate", "truncate-unsized", "garbage"
    status: int = 503
    times: int = 1


@dataclass
class Logged:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str] = field(repr=False)
    status: int = 0


class FakeCvat:
    """State of the fake server; ``with FakeCvat(...) as cvat:`` serves it on 127.0.0.1."""

    def __init__(self, token: str, *, users: Mapping[str, str] | None = None, page_size: int = 2) -> None:
        self.token = token
        self.users = dict(users or {})
        self.page_size = page_size
        self.projects: dict[int, str] = {}
        self.project_labels: dict[int, list[dict[str, Any]]] = {}
        self.share: dict[str, bytes] = {}  # the server's shared storage: path -> bytes (server_files)
        self.tasks: dict[int, FakeTask] = {}
        self.jobs: dict[int, FakeJob] = {}
        self.faults: list[Fault] = []
        self.log: list[Logged] = []
        self.sessions: set[str] = set()
        self.clock = EPOCH + timedelta(days=100)  # updated_date of the next change
        self._requests: dict[str, dict[str, Any]] = {}
        self._uploads: dict[str, bytearray] = {}
        self._task_files: dict[int, dict[str, bytes]] = {}  # media uploaded to a task, before Upload-Finish
        self._data_uploads: dict[str, tuple[int, str, bytearray]] = {}  # TUS id -> task, file name, bytes
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeCvat:
        handler = type("Handler", (_Handler,), {"cvat": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ content
    def add_task(self, task_id: int, name: str, project_id: int | None = 1) -> None:
        if project_id is not None:
            self.projects.setdefault(project_id, f"project {project_id}")
        self.tasks[task_id] = FakeTask(task_id, name, project_id)

    def set_labels(self, project_id: int, labels: list[tuple[str, str]]) -> None:
        """The project's labels, ``(name, type)`` each; ids are numbered across the server."""
        self.projects.setdefault(project_id, f"project {project_id}")
        self.project_labels[project_id] = []
        for name, kind in labels:
            self.project_labels[project_id].append(self._label(name, kind))

    def _label(self, name: str, kind: str, color: str = "#fa3253") -> dict[str, Any]:
        used = [label["id"] for labels in [*self.project_labels.values(), *(t.labels for t in self.tasks.values())]
                for label in labels]
        return {"id": max(used, default=0) + 1, "name": name, "type": kind or "any", "color": color}

    def labels_of(self, task: FakeTask) -> list[dict[str, Any]]:
        return self.project_labels.get(task.project_id, []) if task.project_id is not None else task.labels

    def add_job(self, job_id: int, task_id: int, frames: tuple[int, int], export: bytes, **fields: Any) -> FakeJob:
        job = FakeJob(job_id, task_id, frames[0], frames[1], export, **fields)
        self.jobs[job_id] = job
        return job

    def tick(self) -> datetime:
        """The ``updated_date`` of a change made now (later than every earlier one)."""
        with self._lock:
            self.clock += timedelta(minutes=1)
            return self.clock

    def update_job(self, job_id: int, *, stage: str | None = None, state: str | None = None) -> FakeJob:
        """What ``PATCH /api/jobs/{id}`` does: a new stage without a state resets the state to "new"."""
        job = self.jobs[job_id]
        new_stage = stage or job.stage
        job.state = state or ("new" if new_stage != job.stage else job.state)
        job.stage = new_stage
        job.updated = self.tick()
        return job

    def delete_task(self, task_id: int) -> None:
        """``DELETE /api/tasks/{id}``: the task and its jobs are gone."""
        del self.tasks[task_id]
        for job_id in [j.id for j in self.jobs.values() if j.task_id == task_id]:
            del self.jobs[job_id]

    def upload(self, target: str, object_id: int, annotations: ET.Element) -> None:
        """A "CVAT 1.1" upload to a job or a task: replaces the annotations of its jobs' images."""
        jobs = [self.jobs[object_id]] if target == "job" else \
            [job for job in self.jobs.values() if job.task_id == object_id]
        if target == "task" and object_id not in self.tasks:
            raise KeyError(object_id)
        for job in jobs:
            job.export = with_uploaded(job.export, annotations)
            job.updated = self.tick()

    # ------------------------------------------------------------------ task creation
    def create_task(self, spec: Mapping[str, Any]) -> FakeTask:
        """``POST /api/tasks``: an empty task, in a project (its labels) or with labels of its own."""
        project_id = spec.get("project_id")
        if project_id is not None and spec.get("labels"):
            raise ValueError("Project must have only one of Label set or project_id")
        if project_id is not None and project_id not in self.projects:
            raise ValueError(f"Invalid pk \"{project_id}\" - object does not exist.")
        if not spec.get("name"):
            raise ValueError("name: This field is required.")
        task = FakeTask(max([*self.tasks, 0]) + 1, str(spec["name"]), project_id)
        self.tasks[task.id] = task
        for label in spec.get("labels") or []:
            task.labels.append(self._label(label["name"], label.get("type", "any"), label.get("color") or "#fa3253"))
        return task

    def add_data(self, task: FakeTask, files: Mapping[str, bytes], fields: Mapping[str, Any]) -> str:
        """``POST /api/tasks/{id}/data``: the task's frames (one job of all of them) as a background request."""
        if task.has_data:
            raise ValueError("Adding more data is not supported")
        quality = fields.get("image_quality")
        if not isinstance(quality, int) or not 0 <= quality <= 100:
            raise ValueError("image_quality: This field is required (an integer 0..100).")
        files = dict(files)
        for path in fields.get("server_files") or []:
            if path not in self.share:
                raise ValueError(f"server_files: {path} is not in the share")
            files[Path(path).name] = self.share[path]
        if not files:
            raise ValueError("No media data found")
        order = fields.get("upload_file_order") or []
        method = fields.get("sorting_method", "lexicographical")
        names = [name for name in order if name in files] if method == "predefined" else sorted(files)
        rq_id = f"create:task-{task.id}-{secrets.token_hex(4)}"
        self._requests[rq_id] = {"type": "create:task", "task_id": task.id, "job_id": None, "format": None,
                                 "polls": 0}
        try:
            from PIL import Image

            sizes = {}
            for name in names:
                with Image.open(io.BytesIO(files[name])) as image:
                    image.load()
                    sizes[name] = image.size
        except Exception as error:  # CVAT fails the request with its media reader's message
            self._requests[rq_id]["failed"] = f"Could not read the media: {error}"
            return rq_id
        labels = self.labels_of(task)
        document = ET.Element("annotations")
        ET.SubElement(document, "version").text = "1.1"
        meta = ET.SubElement(ET.SubElement(document, "meta"), "task")
        ET.SubElement(meta, "name").text = task.name
        label_list = ET.SubElement(meta, "labels")
        for label in labels:
            element = ET.SubElement(label_list, "label")
            for key in ("name", "color", "type"):
                ET.SubElement(element, key).text = str(label[key])
            ET.SubElement(element, "attributes")
        for index, name in enumerate(names):
            width, height = sizes[name]
            ET.SubElement(document, "image", {"id": str(index), "name": name, "width": str(width),
                                              "height": str(height)})
        task.has_data, task.image_quality = True, quality
        job_id = max([*self.jobs, 0]) + 1
        self.add_job(job_id, task.id, (0, len(names) - 1),
                     export_zip(ET.tostring(document, encoding="utf-8"), {name: files[name] for name in names}),
                     stage="annotation", state="new", updated=self.tick())
        return rq_id

    def task_jobs(self, task_id: int) -> list[FakeJob]:
        return sorted((job for job in self.jobs.values() if job.task_id == task_id), key=lambda job: job.start_frame)

    def task_frames(self, task_id: int) -> list[tuple[FakeJob, ET.Element]]:
        """Every frame of the task in order: its job and ``<image>`` element."""
        frames = []
        for job in self.task_jobs(task_id):
            root, _ = _unpack(job.export)
            frames += [(job, image) for image in root.iter("image")]
        return frames

    def task_shapes(self, task_id: int) -> list[dict[str, Any]]:
        """The task's shapes as CVAT's JSON API lists them (mask points: RLE + inclusive box)."""
        label_ids = {label["name"]: label["id"] for label in self.labels_of(self.tasks[task_id])}
        shapes = []
        for frame, (_, image) in enumerate(self.task_frames(task_id)):
            for element in _shape_children(image):
                if element.tag == "mask":
                    left, top = int(element.get("left")), int(element.get("top"))
                    width, height = int(element.get("width")), int(element.get("height"))
                    points = [float(v) for v in element.get("rle").split(",")] + \
                        [left, top, left + width - 1, top + height - 1]
                else:
                    points = [float(v) for pair in element.get("points").split(";") for v in pair.split(",")]
                shapes.append({"type": element.tag, "label_id": label_ids[element.get("label")], "frame": frame,
                               "points": points, "source": element.get("source", "manual"),
                               "group": int(element.get("group_id", 0)), "occluded": element.get("occluded") == "1",
                               "z_order": int(element.get("z_order", 0))})
        return shapes

    def put_shapes(self, task_id: int, shapes: list[dict[str, Any]], *, replace: bool) -> None:
        """``PUT`` (replace) or ``PATCH ?action=create`` (add) JSON shapes; their ``source`` is kept."""
        task = self.tasks[task_id]
        names = {label["id"]: label["name"] for label in self.labels_of(task)}
        frames = self.task_frames(task_id)
        for shape in shapes:
            if shape.get("label_id") not in names:
                raise ValueError(f"label_id {shape.get('label_id')} is not a label of task {task_id}")
            if not 0 <= int(shape.get("frame", -1)) < len(frames):
                raise ValueError(f"frame {shape.get('frame')} is outside task {task_id}")
            if shape.get("type") not in ("mask", "polygon"):
                raise ValueError(f"this fake stores mask and polygon shapes, got {shape.get('type')!r}")
        for job in self.task_jobs(task_id):
            root, images = _unpack(job.export)
            elements = list(root.iter("image"))
            for image in elements if replace else []:
                for child in _shape_children(image):
                    image.remove(child)
            for shape in shapes:
                index = int(shape["frame"]) - job.start_frame
                if not 0 <= index < len(elements):
                    continue
                common = {"label": names[shape["label_id"]], "source": shape.get("source") or "manual",
                          "occluded": "1" if shape.get("occluded") else "0", "z_order": str(shape.get("z_order", 0))}
                if shape.get("group"):
                    common["group_id"] = str(shape["group"])
                points = shape["points"]
                if shape["type"] == "mask":
                    xtl, ytl, xbr, ybr = (int(v) for v in points[-4:])
                    runs = [int(v) for v in points[:-4]]
                    if sum(runs) != (xbr - xtl + 1) * (ybr - ytl + 1):
                        raise ValueError("mask runs do not fill the mask's box")
                    ET.SubElement(elements[index], "mask", {**common, "rle": ", ".join(map(str, runs)),
                                                            "left": str(xtl), "top": str(ytl),
                                                            "width": str(xbr - xtl + 1),
                                                            "height": str(ybr - ytl + 1)})
                else:
                    pairs = ";".join(f"{x:.2f},{y:.2f}" for x, y in zip(points[::2], points[1::2], strict=True))
                    ET.SubElement(elements[index], "polygon", {**common, "points": pairs})
            job.export = export_zip(ET.tostring(root, encoding="utf-8"), images)
            job.updated = self.tick()

    def requests_to(self, method: str, prefix: str) -> list[Logged]:
        return [entry for entry in self.log if entry.method == method and entry.path.startswith(prefix)]

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and path.startswith(fault.path) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    # ------------------------------------------------------------------ models
    def job_model(self, job: FakeJob) -> models.JobRead:
        task = self.tasks[job.task_id]
        base = self.url
        return models.JobRead._from_openapi_data(
            issues=models.IssuesSummary._from_openapi_data(url=f"{base}/api/issues?job_id={job.id}", count=0),
            labels=models.LabelsSummary._from_openapi_data(url=f"{base}/api/labels?job_id={job.id}"),
            url=f"{base}/api/jobs/{job.id}", id=job.id, task_id=task.id, task_name=task.name,
            project_id=task.project_id, project_name=self.projects.get(task.project_id),
            assignee=None, guide_id=None, dimension="2d", mode="annotation", media_type="image",
            bug_tracker=None, status="annotation" if job.stage == "annotation" else
            "completed" if (job.stage, job.state) == ("acceptance", "completed") else "validation",
            stage=job.stage, state=job.state,
            frame_count=job.stop_frame - job.start_frame + 1, start_frame=job.start_frame,
            stop_frame=job.stop_frame, data_chunk_size=36, data_compressed_chunk_type="imageset",
            data_original_chunk_type="imageset", created_date=EPOCH, updated_date=job.updated,
            type="annotation", organization=None, target_storage=None, source_storage=None,
            assignee_updated_date=None, parent_job_id=None, replicas_count=0)

    def task_model(self, task: FakeTask) -> models.TaskRead:
        base = self.url
        jobs = [j for j in self.jobs.values() if j.task_id == task.id]
        return models.TaskRead._from_openapi_data(
            jobs=models.JobsSummary._from_openapi_data(
                completed=sum(j.state == "completed" for j in jobs), validation=0, count=len(jobs),
                url=f"{base}/api/jobs?task_id={task.id}"),
            labels=models.LabelsSummary._from_openapi_data(url=f"{base}/api/labels?task_id={task.id}"),
            url=f"{base}/api/tasks/{task.id}", id=task.id, name=task.name, project_id=task.project_id,
            project_name=self.projects.get(task.project_id), owner=None, assignee=None, bug_tracker="",
            created_date=EPOCH, updated_date=max((j.updated for j in jobs), default=EPOCH), overlap=0,
            segment_size=0, status="completed" if jobs and all(j.state == "completed" for j in jobs) else
            "annotation", size=sum(j.stop_frame - j.start_frame + 1 for j in jobs), image_quality=task.image_quality,
            dimension="2d", mode="annotation", media_type="image", subset="", organization=None,
            target_storage=None, source_storage=None, assignee_updated_date=None)

    def project_model(self, project_id: int) -> models.ProjectRead:
        base = self.url
        return models.ProjectRead._from_openapi_data(
            tasks=models.TasksSummary._from_openapi_data(
                count=sum(t.project_id == project_id for t in self.tasks.values()),
                url=f"{base}/api/tasks?project_id={project_id}"),
            labels=models.LabelsSummary._from_openapi_data(url=f"{base}/api/labels?project_id={project_id}"),
            url=f"{base}/api/projects/{project_id}", id=project_id, name=self.projects[project_id], owner=None,
            assignee=None, bug_tracker="", task_subsets=[], created_date=EPOCH, updated_date=EPOCH,
            status="annotation", dimension="2d", organization=None, target_storage=None, source_storage=None)

    def request_model(self, rq_id: str) -> models.Request:
        state = self._requests[rq_id]
        state["polls"] += 1
        finished = state["polls"] > 1
        failed = finished and state.get("failed")
        export = state["type"] == "export:dataset"
        job_id, task_id = state.get("job_id"), state.get("task_id")
        return models.Request._from_openapi_data(
            status=models.RequestStatus("failed" if failed else "finished" if finished else "started"), id=rq_id,
            operation=models.RequestDataOperation._from_openapi_data(
                type=state["type"], target="job" if job_id is not None else "task", project_id=None,
                task_id=task_id, job_id=job_id, format=state["format"], function_id=None),
            created_date=EPOCH, message=failed or "", progress=1.0 if finished else 0.5, started_date=EPOCH,
            finished_date=EPOCH if finished else None, expiry_date=None,
            owner=models.RequestOwner._from_openapi_data(id=1, username="alice", _spec_property_naming=True),
            result_url=f"{self.url}/api/jobs/{job_id}/dataset/download?rq_id={rq_id}"
            if finished and export and not failed else None, result_id=None)

    def new_export(self, job_id: int, format_name: str) -> str:
        rq_id = f"export:job-{job_id}-dataset-{secrets.token_hex(4)}"
        with self._lock:
            self.jobs[job_id].exports += 1
            number = self.jobs[job_id].exports
        self._requests[rq_id] = {"type": "export:dataset", "job_id": job_id, "task_id": self.jobs[job_id].task_id,
                                 "format": format_name, "polls": 0, "number": number}
        return rq_id

    def export_bytes(self, job_id: int, rq_id: str) -> bytes:
        """The download of one export request: the job's annotations, shapes in this export's order."""
        return reordered(self.jobs[job_id].export, self._requests[rq_id]["number"])

    def new_import(self, target: str, object_id: int, format_name: str) -> str:
        rq_id = f"import:{target}-{object_id}-annotations-{secrets.token_hex(4)}"
        task_id = object_id if target == "task" else self.jobs[object_id].task_id
        self._requests[rq_id] = {"type": "import:annotations", "format": format_name, "polls": 0,
                                 "task_id": task_id, "job_id": object_id if target == "job" else None}
        return rq_id


def _json(model: Any) -> bytes:
    return json.dumps(to_json(model)).encode()


class _Handler(BaseHTTPRequestHandler):
    cvat: FakeCvat
    server_version = "FakeCVAT/2.80"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test log has the requests
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ------------------------------------------------------------------ plumbing
    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        entry = Logged(method, path, query, dict(self.headers))
        self.cvat.log.append(entry)
        fault = self.cvat.take_fault(method, path)
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            return self._send(entry, fault.status, json.dumps({"detail": "injected failure"}).encode())
        try:
            status, payload, headers = self._route(method, path, query, body)
        except KeyError:
            status, payload, headers = 404, json.dumps({"detail": "Not found."}).encode(), {}
        except Exception as error:  # a bug in the fake shows as a 500, not as a dropped connection
            status, payload, headers = 500, json.dumps({"detail": repr(error)}).encode(), {}
        if fault is not None and fault.kind == "garbage":
            payload = b"<html><body>502 Bad Gateway (proxy)</body></html>"
        cut = fault is not None and fault.kind in ("truncate", "truncate-unsized")
        self._send(entry, status, payload, headers, cut=cut, sized=not (fault and fault.kind == "truncate-unsized"))

    def _send(self, entry: Logged, status: int, payload: bytes, headers: Mapping[str, str] | None = None, *,
              cut: bool = False, sized: bool = True) -> None:
        entry.status = status
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        if sized:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2] if cut else payload)
        self.wfile.flush()
        self.close_connection = True

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.cvat.token}":
            return True
        cookies = dict(part.strip().split("=", 1) for part in (self.headers.get("Cookie") or "").split(";")
                       if "=" in part)
        return cookies.get("sessionid") in self.cvat.sessions

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes
               ) -> tuple[int, bytes, dict[str, str]]:
        cvat = self.cvat
        if method == "GET" and path == "/api/server/about":
            return 200, _json(models.About._from_openapi_data(
                name="Computer Vision Annotation Tool", description="fake", version="2.80.0", logo_url="",
                subtitle="")), {}
        if method == "POST" and path == "/api/auth/login":
            credentials = json.loads(body or b"{}")
            if cvat.users.get(credentials.get("username")) != credentials.get("password"):
                return 400, json.dumps({"non_field_errors": ["Unable to log in with provided credentials."]}
                                       ).encode(), {}
            session = secrets.token_hex(8)
            cvat.sessions.add(session)
            return 200, _json(models.Token._from_openapi_data(key=secrets.token_hex(8))), {
                "Set-Cookie": f"sessionid={session}; Path=/, csrftoken={secrets.token_hex(8)}; Path=/"}
        if not self._authorised():
            return 401, json.dumps({"detail": "Invalid token."}).encode(), {}
        if method == "POST" and path == "/api/auth/logout":
            return 200, _json(models.RestAuthDetail._from_openapi_data(detail="Successfully logged out.")), {}
        if method == "GET" and path == "/api/users/self":
            return 200, _json(models.User._from_openapi_data(
                username="alice", groups=["user"], url=f"{cvat.url}/api/users/1", id=1, first_name="",
                last_name="", email="alice@example.com", is_staff=False, is_superuser=False, is_active=True,
                last_login=EPOCH, date_joined=EPOCH, has_analytics_access=False)), {}
        if match := re.fullmatch(r"/api/projects/(\d+)", path):
            project_id = int(match[1])
            if project_id not in cvat.projects:
                raise KeyError(path)
            return 200, _json(cvat.project_model(project_id)), {}
        if method == "POST" and path in ("/api/tasks", "/api/tasks/"):
            try:
                task = cvat.create_task(json.loads(body or b"{}"))
            except ValueError as error:
                return 400, json.dumps({"detail": str(error)}).encode(), {}
            return 201, _json(cvat.task_model(task)), {}
        if method == "GET" and path in ("/api/labels", "/api/labels/"):
            return 200, self._labels_page(query), {}
        if method == "GET" and (match := re.fullmatch(r"/api/tasks/(\d+)/data/meta", path)):
            return 200, self._data_meta(cvat.tasks[int(match[1])]), {}
        if match := re.fullmatch(r"/api/tasks/(\d+)/data/?(\w*)", path):
            return self._task_data(method, cvat.tasks[int(match[1])], match[2], body)
        if (match := re.fullmatch(r"/api/tasks/(\d+)/annotations/?", path)) and (
                method in ("GET", "PUT") or (method == "PATCH" and "action" in query)):
            return self._task_annotations(method, cvat.tasks[int(match[1])], query, body)
        if match := re.fullmatch(r"/api/tasks/(\d+)", path):
            task = cvat.tasks[int(match[1])]
            if method == "DELETE":
                cvat.delete_task(task.id)
                return 204, b"", {}
            return 200, _json(cvat.task_model(task)), {}
        if method == "GET" and path == "/api/jobs":
            return 200, self._jobs_page(query), {}
        if match := re.fullmatch(r"/api/jobs/(\d+)", path):
            job = cvat.jobs[int(match[1])]
            if method == "DELETE":
                return 400, json.dumps(["Only ground truth jobs can be removed"]).encode(), {}
            if method == "PATCH":
                fields = json.loads(body or b"{}")
                cvat.update_job(job.id, stage=fields.get("stage"), state=fields.get("state"))
            return 200, _json(cvat.job_model(job)), {}
        if match := re.fullmatch(r"/api/(jobs|tasks)/(\d+)/annotations/?(\w*)", path):
            return self._upload(method, match[1][:-1], int(match[2]), match[3], query, body)
        if method == "POST" and (match := re.fullmatch(r"/api/jobs/(\d+)/dataset/export", path)):
            job_id = int(match[1])
            if job_id not in cvat.jobs:
                raise KeyError(path)
            if query.get("save_images", [""])[0].lower() != "true":  # the SDK sends "True"
                return 400, json.dumps({"detail": "this fake serves exports with images only"}).encode(), {}
            rq_id = cvat.new_export(job_id, query["format"][0])
            return 202, _json(models.RqId._from_openapi_data(rq_id=rq_id)), {}
        if method == "GET" and (match := re.fullmatch(r"/api/requests/(.+)", path)):
            return 200, _json(cvat.request_model(match[1])), {}
        if method == "GET" and (match := re.fullmatch(r"/api/jobs/(\d+)/dataset/download", path)):
            job = cvat.jobs[int(match[1])]
            return 200, cvat.export_bytes(job.id, query["rq_id"][0]), {
                "Content-Type": "application/zip", "Content-Disposition": f'attachment; filename="job_{job.id}.zip"'}
        raise KeyError(path)

    def _upload(self, method: str, target: str, object_id: int, file_id: str, query: dict[str, list[str]],
                body: bytes) -> tuple[int, bytes, dict[str, str]]:
        """cvat-sdk's annotation upload (``AnnotationUploader``): TUS between two extra POSTs."""
        cvat = self.cvat
        (cvat.jobs if target == "job" else cvat.tasks)[object_id]  # 404 for an unknown id
        if method == "POST" and "Upload-Start" in self.headers:
            return 202, b"", {}
        if method == "POST" and "Upload-Finish" in self.headers:
            if query.get("format", [""])[0] != "CVAT 1.1":
                return 400, json.dumps(["this fake imports the 'CVAT 1.1' format only"]).encode(), {}
            data = bytes(cvat._uploads.pop(query["filename"][0]))
            if data[:2] == b"PK":
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    data = archive.read("annotations.xml")
            cvat.upload(target, object_id, parse_xml(data))
            rq_id = cvat.new_import(target, object_id, query["format"][0])
            return 202, json.dumps({"rq_id": rq_id}).encode(), {}
        if method == "POST":  # TUS create: Upload-Length, Upload-Metadata "filename <base64>"
            meta = dict(item.split(" ", 1) for item in self.headers["Upload-Metadata"].split(","))
            name = base64.b64decode(meta["filename"]).decode()
            upload_id = secrets.token_hex(6)
            cvat._uploads[name] = bytearray()
            cvat._uploads[upload_id] = cvat._uploads[name]
            return 201, b"", {"Location": f"{cvat.url}/api/{target}s/{object_id}/annotations/{upload_id}",
                              "Upload-Filename": name}
        data = cvat._uploads[file_id]
        if method == "PATCH":
            if int(self.headers["Upload-Offset"]) != len(data):
                return 409, b"", {"Upload-Offset": str(len(data))}
            data.extend(body)
        return 204 if method == "PATCH" else 200, b"", {"Upload-Offset": str(len(data)), "Tus-Resumable": "1.0.0"}

    def _labels_page(self, query: dict[str, list[str]]) -> bytes:
        cvat = self.cvat
        if "project_id" in query:
            labels = cvat.project_labels.get(int(query["project_id"][0]), [])
        elif "task_id" in query:
            labels = cvat.labels_of(cvat.tasks[int(query["task_id"][0])])
        elif "job_id" in query:
            labels = cvat.labels_of(cvat.tasks[cvat.jobs[int(query["job_id"][0])].task_id])
        else:
            labels = [label for labels in cvat.project_labels.values() for label in labels]
        return _json(models.PaginatedLabelList._from_openapi_data(
            count=len(labels), next=None, previous=None,
            results=[models.Label._from_openapi_data(name=label["name"], id=label["id"], color=label["color"],
                                                     type=label["type"], attributes=[], sublabels=[],
                                                     has_parent=False) for label in labels]))

    def _data_meta(self, task: FakeTask) -> bytes:
        frames = self.cvat.task_frames(task.id)
        return _json(models.DataMetaRead._from_openapi_data(
            chunks_updated_date=EPOCH, deleted_frames=[], image_quality=task.image_quality, size=len(frames),
            start_frame=0, stop_frame=max(len(frames) - 1, 0), chunk_size=36, frame_filter="", storage="local",
            frames=[models.FrameMeta._from_openapi_data(name=image.get("name"), related_files=0,
                                                        width=int(image.get("width")),
                                                        height=int(image.get("height")))
                    for _, image in frames]))

    def _task_data(self, method: str, task: FakeTask, file_id: str, body: bytes
                   ) -> tuple[int, bytes, dict[str, str]]:
        """A task's media, as cvat-sdk's ``DataUploader`` sends it (or one JSON request with server files)."""
        cvat = self.cvat
        files = cvat._task_files.setdefault(task.id, {})
        headers = self.headers
        if method == "POST" and "Upload-Start" in headers:
            files.clear()
            return 202, b"", {}
        if method == "POST" and "Upload-Multiple" in headers:
            message = BytesParser(policy=email_policy.HTTP).parsebytes(
                b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            for part in message.iter_parts():
                if part.get_param("name", header="content-disposition", failobj="").startswith("client_files["):
                    files[Path(part.get_filename()).name] = part.get_payload(decode=True)
            return 200, b"", {}
        if method == "POST" and "Upload-Metadata" in headers:  # TUS create for one big file
            meta = dict(item.split(" ", 1) for item in headers["Upload-Metadata"].split(","))
            name = Path(base64.b64decode(meta["filename"]).decode()).name
            upload_id = secrets.token_hex(6)
            cvat._data_uploads[upload_id] = (task.id, name, bytearray())
            return 201, b"", {"Location": f"{cvat.url}/api/tasks/{task.id}/data/{upload_id}", "Upload-Filename": name}
        if file_id:
            owner, name, data = cvat._data_uploads[file_id]
            if owner != task.id:
                raise KeyError(file_id)
            if method == "PATCH":
                if int(headers["Upload-Offset"]) != len(data):
                    return 409, b"", {"Upload-Offset": str(len(data))}
                data.extend(body)
                if len(data) >= int(headers.get("Upload-Length") or len(data)):
                    files[name] = bytes(data)
            return 204 if method == "PATCH" else 200, b"", {"Upload-Offset": str(len(data)), "Tus-Resumable": "1.0.0"}
        if method != "POST":
            raise KeyError(method)
        fields = json.loads(body or b"{}")
        uploaded = dict(files) if "Upload-Finish" in headers else {}
        files.clear()
        try:
            rq_id = cvat.add_data(task, uploaded, fields)
        except ValueError as error:
            return 400, json.dumps({"detail": str(error)}).encode(), {}
        return 202, _json(models.RqId._from_openapi_data(rq_id=rq_id)), {}

    def _task_annotations(self, method: str, task: FakeTask, query: dict[str, list[str]], body: bytes
                          ) -> tuple[int, bytes, dict[str, str]]:
        cvat = self.cvat
        if method != "GET":
            action = query.get("action", ["create"])[0]
            if method == "PATCH" and action != "create":
                return 400, json.dumps({"detail": "this fake supports action=create only"}).encode(), {}
            try:
                cvat.put_shapes(task.id, json.loads(body or b"{}").get("shapes", []), replace=method == "PUT")
            except ValueError as error:
                return 400, json.dumps({"detail": str(error)}).encode(), {}
        shapes = [models.LabeledShape._from_openapi_data(
            type=models.ShapeType(shape["type"]), label_id=shape["label_id"], frame=shape["frame"],
            points=shape["points"], source=shape["source"], group=shape["group"], occluded=shape["occluded"],
            z_order=shape["z_order"], outside=False, rotation=0.0, attributes=[], elements=[])
            for shape in cvat.task_shapes(task.id)]
        return 200, _json(models.LabeledData._from_openapi_data(version=0, tags=[], shapes=shapes, tracks=[])), {}

    def _jobs_page(self, query: dict[str, list[str]]) -> bytes:
        cvat = self.cvat

        def wanted(job: FakeJob) -> bool:
            task = cvat.tasks[job.task_id]
            checks = {"project_id": str(task.project_id), "task_id": str(job.task_id), "stage": job.stage,
                      "state": job.state, "type": "annotation"}
            return all(query[key][0] == value for key, value in checks.items() if key in query)

        matching = [cvat.jobs[i] for i in sorted(cvat.jobs) if wanted(cvat.jobs[i])]
        page = int(query.get("page", ["1"])[0])
        size = int(query.get("page_size", [str(cvat.page_size)])[0])
        chunk = matching[(page - 1) * size: page * size]
        more = page * size < len(matching)
        following = {key: values[0] for key, values in query.items()} | {"page": str(page + 1)}
        return _json(models.PaginatedJobReadList._from_openapi_data(
            count=len(matching), results=[cvat.job_model(job) for job in chunk],
            next=f"{cvat.url}/api/jobs?{urlencode(following)}" if more else None, previous=None))


def synthetic_job_export(annotations: Path, image_dir: Path, names: list[str], *, drop_shapes: int = 0) -> bytes:
    """The export of a job holding ``names`` from a synthetic CVAT XML (``generate_dataset(write_cvat_xml=True)``).

    ``drop_shapes`` removes that many shapes from the first image: an annotator's correction.
    """
    tree = ET.parse(annotations)
    root = tree.getroot()
    for image in root.findall("image"):
        if image.get("name") not in names:
            root.remove(image)
    first = root.find("image")
    for shape in list(first)[:drop_shapes] if first is not None else []:
        first.remove(shape)
    return export_zip(ET.tostring(root, encoding="utf-8"), {name: (image_dir / name).read_bytes() for name in names})
