"""Offline model-assisted labelling of a CVAT export: ``images/`` + ``annotations.xml`` in,
the same annotation file with predicted shapes out (plus overlays and prediction records).

Commit order, which makes a killed run safe to resume:

1. ``run.json`` names the run generation before any record is written.
2. Per image: overlay, then the prediction record (``predictions/<name>.json``), each written
   to a temp file and renamed. The record's rename is the image's commit point.
3. ``annotations.xml`` is never read back: it is rebuilt from the *input* file plus the
   committed records (see ``ownership``), and saved atomically every ``save_interval`` seconds
   and at the end.

A killed run therefore leaves records that are complete or absent, and an annotation file that
is some earlier complete state. ``--resume`` keeps every record of the current generation made
with the same settings, predicts the other images, and rebuilds the file from the input: no
committed prediction is lost, and since shapes come only from records, each exactly once, none
is duplicated.

Before anything is predicted, each frame's state is decided by the review rule (``review``):
frames a person has touched since the tool wrote them are left exactly as the input has them
and are not predicted, unless ``relabel_reviewed``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fvcore.common.config import CfgNode
from tqdm import tqdm

from mask2former.io import ImageDecodeError, read_image
from mask2former.predictor import Predictor
from mask2former.structures import Instances

from ..cvat import CvatDocument, CvatXmlError, ImageEntry
from ..visualize import draw_instances
from .names import UnsafeImageNameError, image_file
from .outputs import OutputFolder
from .ownership import AnnotationMerger
from .prediction_records import PredictionRecord, RecordError, ShapeChoice, build_record, shape_kinds
from .prefetch import prefetch
from .review import LEFT_ALONE, frame_state
from .summary import LabelSummary

logger = logging.getLogger(__name__)


class FatalInputError(Exception):
    """The run cannot start: no, unsafe, malformed or unusable annotation file (a "CVAT for video"
    export, no image), or unusable folders."""


@dataclass(frozen=True)
class LabelOptions:
    """What to label and how; ``model`` identifies the weights (see :func:`model_identity`)."""

    input_dir: Path
    output_dir: Path
    batch_size: int = 4
    workers: int = 2
    polygons: bool = False
    overwrite: bool = False
    relabel_reviewed: bool = False
    records_from: Path | None = None
    save_interval: float = 60.0
    progress: bool | None = None
    model: Mapping[str, Any] = field(default_factory=dict)


def model_identity(cfg: CfgNode, weights: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A digest of the full config plus the weights, stored in records: a resumed run reuses
    only records made by the same model. A local weights file is identified by size and mtime."""
    spec = str(cfg.MODEL.WEIGHTS if weights is None else weights)
    merged = cfg.clone()
    merged.defrost()
    merged.MODEL.WEIGHTS = spec
    identity: dict[str, Any] = {"config": hashlib.sha256(merged.dump().encode()).hexdigest()[:16], "weights": spec}
    if spec and Path(spec).is_file():
        stat = Path(spec).stat()
        identity["weights_file"] = [stat.st_size, stat.st_mtime_ns]
    return identity


@dataclass(frozen=True)
class _Job:
    entry: ImageEntry
    path: Path
    previous: PredictionRecord | None


class _Skip(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def label_folder(predictor: Predictor, options: LabelOptions) -> LabelSummary:
    """Run the whole labelling job; per-image problems are reported in the summary, not raised."""
    started = time.perf_counter()
    if options.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {options.batch_size}")
    document, images_dir = _load_input(options.input_dir)
    if options.records_from is not None and not (options.records_from / "predictions").is_dir():
        raise FatalInputError(f"--records-from {options.records_from}: no predictions/ folder there "
                              "(give the --output_dir of the earlier run)")
    out = OutputFolder(options.output_dir)
    if out.annotations.exists() and os.path.samefile(out.annotations, options.input_dir / "annotations.xml"):
        raise FatalInputError("the output folder would overwrite the input annotations.xml; choose another one")
    out.prepare()
    generation = out.generation(new=options.overwrite)
    kinds = shape_kinds(document, predictor.class_names, options.polygons)
    for label, choice in kinds.items():
        if choice.kind is None:
            logger.warning("class %r: not written: %s", label, choice.reason)
        elif choice.kind != ("polygon" if options.polygons else "mask"):
            logger.warning("class %r: the task declares a %s label: writing %ss", label, choice.kind, choice.kind)
    shapes = {label: choice.to_json() for label, choice in kinds.items()}
    settings = json.loads(json.dumps({"model": dict(options.model), "threshold": predictor.score_threshold,
                                      "classes": list(predictor.class_names), "shapes": shapes}))
    summary = LabelSummary(annotations=out.annotations, images=len(document.images))
    merger = AnnotationMerger(document)
    records: dict[str, PredictionRecord] = {}
    jobs = _plan(document, images_dir, out, merger, records, summary, generation=generation, settings=settings,
                 options=options)

    loop_started = time.perf_counter()
    bar = tqdm(total=len(jobs), unit="img", desc="labelling", disable=None if options.progress is None
               else not options.progress)
    committer = _Committer(out, merger, records, summary, bar, kinds=kinds, generation=generation,
                           settings=settings, save_interval=options.save_interval)
    try:
        _predict_all(predictor, jobs, options, committer, summary, bar)
        committer.drain()
    finally:
        committer.shutdown()
        bar.close()
    summary.predict_seconds = time.perf_counter() - loop_started

    document.save(out.annotations)
    _count_shapes(document, merger, records, summary)
    summary.seconds = time.perf_counter() - started
    out.write_summary(summary.to_json())
    return summary


def _load_input(input_dir: Path) -> tuple[CvatDocument, Path]:
    annotations = input_dir / "annotations.xml"
    if not annotations.is_file():
        raise FatalInputError(f"{annotations} not found: export the task from CVAT as 'CVAT for images 1.1' "
                              "and put its annotations.xml next to images/")
    try:
        document = CvatDocument.load(annotations)
    except CvatXmlError as error:
        raise FatalInputError(str(error)) from None
    except OSError as error:
        raise FatalInputError(f"{annotations}: cannot read: {error}") from None
    problem = document.image_export_problem()
    if problem is not None:
        raise FatalInputError(problem)
    if document.version not in (None, "1.1"):
        logger.warning("%s: version %r, expected 1.1 (CVAT for images)", annotations, document.version)
    if document.track_count:
        logger.warning("%s: %d <track> element(s) ignored (CVAT for images has none)", annotations,
                       document.track_count)
    images_dir = input_dir / "images"
    if not images_dir.is_dir():
        logger.warning("%s is not a folder: only images with earlier predictions can be kept", images_dir)
    return document, images_dir


def _read_record(out: OutputFolder, earlier: OutputFolder | None, name: str) -> tuple[PredictionRecord | None, bool]:
    """The image's record here, else in ``--records-from`` (second value: it is from there)."""
    record = out.read_record(name)
    if record is None and earlier is not None:
        record = earlier.read_record(name)
        return record, record is not None
    return record, False


def _plan(document: CvatDocument, images_dir: Path, out: OutputFolder, merger: AnnotationMerger,
          records: dict[str, PredictionRecord], summary: LabelSummary, *, generation: str,
          settings: Mapping[str, Any], options: LabelOptions) -> list[_Job]:
    """Leave reviewed frames alone, reuse usable records, apply older ones until replaced, and
    list the images to predict."""
    jobs: list[_Job] = []
    stale = 0
    earlier = None if options.records_from is None else OutputFolder(options.records_from)
    for entry in document.images:
        try:
            path = image_file(images_dir, entry.name)
            record, foreign = _read_record(out, earlier, entry.name)
        except UnsafeImageNameError as error:
            summary.skip("bad_name", entry.name, str(error))
            continue
        except RecordError as error:
            logger.warning("%s; the image counts as one without a record (shapes that record wrote earlier "
                           "cannot be recognised and stay in the file)", error)
            record, foreign = None, False
        state = frame_state(record, merger.input_fingerprint(entry.name), entry)
        if state in LEFT_ALONE:
            if not options.relabel_reviewed:
                summary.leave_alone(state, entry.name)
                continue
            summary.relabelled_reviewed += 1
        if record is not None and not foreign and record.usable_for(generation, settings, entry.width, entry.height):
            merger.apply(record)
            records[entry.name] = _with_current_frame(out, merger, record)
            summary.reused += 1
            continue
        if record is not None:
            stale += 1
            # keep its shapes until a new prediction replaces them (or for good if the image now fails)
            fits = (record.width, record.height) == (entry.width, entry.height)
            merger.apply(record, add=fits)
            if fits:
                records[entry.name] = record
        jobs.append(_Job(entry, path, record))
    if summary.reused:
        logger.info("resuming: %d image(s) already predicted by this run", summary.reused)
    if stale:
        logger.info("%d image(s) have predictions from an earlier run or other settings: predicting them again",
                    stale)
    return jobs


def _with_current_frame(out: OutputFolder, merger: AnnotationMerger, record: PredictionRecord) -> PredictionRecord:
    """A reused record, its fingerprints brought up to this input (rewritten only when they
    changed): the frame as this run found and leaves it is what the next run compares with."""
    current = record.with_frame(merger.input_fingerprint(record.image), merger.output_fingerprint(record))
    if current != record:
        out.write_record(current)
    return current


def _load(job: _Job) -> np.ndarray:
    if not job.path.is_file():
        raise _Skip("missing", f"{job.path} not found")
    try:
        image = read_image(job.path)
    except ImageDecodeError as error:
        raise _Skip("unreadable", str(error)) from None
    if image.shape[:2] != (job.entry.height, job.entry.width):
        raise _Skip("size_mismatch", f"image is {image.shape[1]}x{image.shape[0]}, the annotation file says "
                                     f"{job.entry.width}x{job.entry.height}")
    return image


def _predict_all(predictor: Predictor, jobs: list[_Job], options: LabelOptions, committer: _Committer,
                 summary: LabelSummary, bar: tqdm) -> None:
    batch: list[tuple[_Job, np.ndarray]] = []
    for loaded in prefetch(jobs, _load, workers=options.workers, ahead=2 * options.batch_size):
        if loaded.error is not None:
            reason = loaded.error.reason if isinstance(loaded.error, _Skip) else "unreadable"
            summary.skip(reason, loaded.item.entry.name, str(loaded.error))
            logger.warning("skipping %s: %s", loaded.item.entry.name, loaded.error)
            committer.advance()
            continue
        batch.append((loaded.item, loaded.value))  # type: ignore[arg-type]
        if len(batch) == options.batch_size:
            _predict_batch(predictor, batch, committer, summary)
            batch = []
    if batch:
        _predict_batch(predictor, batch, committer, summary)


def _predict_batch(predictor: Predictor, batch: list[tuple[_Job, np.ndarray]], committer: _Committer,
                   summary: LabelSummary) -> None:
    started = time.perf_counter()
    try:
        results: list[Instances | Exception] = list(predictor.predict_batch([image for _, image in batch]))
    except Exception as error:
        if len(batch) == 1:
            results = [error]
        else:  # find the image that fails; the others still get their predictions
            logger.warning("batch failed (%s); predicting its images one by one", error)
            results = []
            for _, image in batch:
                try:
                    results.append(predictor(image))
                except Exception as single_error:
                    results.append(single_error)
    summary.inference_seconds += time.perf_counter() - started
    for (job, image), result in zip(batch, results, strict=True):
        if isinstance(result, Exception):
            summary.skip("inference_failed", job.entry.name, f"{type(result).__name__}: {result}")
            logger.error("model failed on %s: %s", job.entry.name, result)
            committer.advance()
        else:
            committer.submit(job, image, result)


class _Committer:
    """Writes results on one background thread, in submission order, while the model runs on.

    Only this thread touches the document between ``submit`` and ``drain``. At most
    ``max_pending`` results wait, so a slow disk slows the model instead of filling memory.
    """

    def __init__(self, out: OutputFolder, merger: AnnotationMerger, records: dict[str, PredictionRecord],
                 summary: LabelSummary, bar: tqdm, *, kinds: Mapping[str, ShapeChoice], generation: str,
                 settings: Mapping[str, Any], save_interval: float, max_pending: int = 8) -> None:
        self.out, self.merger, self.records, self.summary, self.bar = out, merger, records, summary, bar
        self.kinds, self.generation, self.settings = kinds, generation, settings
        self.save_interval = save_interval
        self.max_pending = max_pending
        self._last_save = time.monotonic()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._pending: collections.deque[Future[None]] = collections.deque()
        self._bar_lock = threading.Lock()
        self._failure: BaseException | None = None

    def submit(self, job: _Job, image: np.ndarray, instances: Instances) -> None:
        if self._failure is not None:  # stop predicting as soon as writing has failed
            self.drain()
        self._pending.append(self._executor.submit(self._guarded_commit, job, image, instances))
        while len(self._pending) > self.max_pending:
            self._pending.popleft().result()

    def advance(self) -> None:
        with self._bar_lock:
            self.bar.update(1)

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def shutdown(self) -> None:
        """After an error: drop results not yet started (the run is resumable), finish the current one."""
        for future in self._pending:
            future.cancel()
        self._executor.shutdown(wait=True)

    def _guarded_commit(self, job: _Job, image: np.ndarray, instances: Instances) -> None:
        """After one failed commit none of the later ones runs, as after a real crash."""
        if self._failure is not None:
            return
        try:
            self._commit(job, image, instances)
        except BaseException as error:
            self._failure = error
            raise

    def _write_overlay(self, name: str, image: np.ndarray, instances: Instances) -> None:
        """The picture is for people checking the run: a drawing that fails costs that picture, logged
        with its cause, never the image's annotations (writing it to disk may still fail the run)."""
        try:
            overlay = draw_instances(image, instances)
        except Exception:
            logger.exception("overlay of %s not drawn (its annotations are written)", name)
            self.summary.overlays_failed += 1
            return
        self.out.write_visual(name, overlay)

    def _commit(self, job: _Job, image: np.ndarray, instances: Instances) -> None:
        name = job.entry.name
        record = build_record(name, instances, kinds=self.kinds, generation=self.generation,
                              settings=self.settings, previous=job.previous)
        record = record.with_frame(self.merger.input_fingerprint(name), self.merger.output_fingerprint(record))
        self._write_overlay(name, image, instances)
        self.out.write_record(record)  # the commit point of this image
        self.merger.apply(record)
        self.records[name] = record
        self.summary.predicted += 1
        self.advance()
        if time.monotonic() - self._last_save >= self.save_interval:
            self.merger.document.save(self.out.annotations)
            self._last_save = time.monotonic()


def _count_shapes(document: CvatDocument, merger: AnnotationMerger, records: Mapping[str, PredictionRecord],
                  summary: LabelSummary) -> None:
    for image in document.images:
        for shape in merger.written.get(image.name, ()):
            summary.shapes[shape.label] += 1
        kept = merger.kept_input_shapes(image.name)
        summary.kept_input_shapes += kept
        summary.replaced_shapes += merger.input_shapes[image.name] - kept
        record = records.get(image.name)
        for instance in record.instances if record is not None else ():
            if not instance.shapes:
                summary.not_written[instance.note or "unknown"] += 1
