"""CVAT 1.1 exports with original frames: request, poll, download to staging, validate.

A download lands in the staging folder under a temporary name and is renamed only when complete
(cvat-sdk's writer), then checked as a whole: every zip member's CRC, safe member names, an
``annotations.xml`` that parses safely (``barrier_annotator.cvat``) and a file for every ``<image>``.
A truncated or corrupt file is deleted and downloaded again; nothing unchecked reaches the dataset.
(COCO is not used: CVAT exports mask shapes to COCO as crowd RLE, which trainers drop.)
"""

from __future__ import annotations

import logging
import posixpath
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from cvat_sdk.api_client.exceptions import ApiException, NotFoundException
from cvat_sdk.core.client import Client
from cvat_sdk.core.downloading import Downloader
from cvat_sdk.core.helpers import DeferredTqdmProgressReporter

from barrier_annotator.cvat import CvatDocument, CvatXmlError

from .cvat_client import CvatError
from .retry import RetriesExhausted, RetryPolicy, TransientError, describe_error, with_retries

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "CVAT for images 1.1"
ANNOTATIONS = "annotations.xml"
IMAGES_PREFIX = "images/"
MAX_UNCOMPRESSED_BYTES = 64 << 30  # refuses zip bombs; a CVAT job with original frames is far smaller


class ExportError(CvatError):
    """The export failed on the server or its content is unusable (not a transfer problem)."""


class CorruptDownload(TransientError):
    """Truncated or damaged zip: downloaded again."""


@dataclass(frozen=True)
class ExportSettings:
    poll_period: float = 2.0
    timeout: float = 3600.0  # for the server to prepare one export
    progress: bool = True


def download_job_export(client: Client, job_id: int, staging: Path, policy: RetryPolicy,
                        settings: ExportSettings = ExportSettings()) -> Path:
    """The checked ``staging/job_<id>.zip`` of one job's CVAT 1.1 export with images."""
    staging.mkdir(parents=True, exist_ok=True)
    try:
        rq_id = with_retries(
            lambda: client.api_client.jobs_api.create_dataset_export(
                id=job_id, format=EXPORT_FORMAT, save_images=True)[0].rq_id,
            f"export request for job {job_id}", policy)
        url = _same_server(client, _wait_for_export(client, job_id, rq_id, policy, settings))
        target = staging / f"job_{job_id}.zip"

        def attempt() -> Path:
            target.unlink(missing_ok=True)
            pbar = DeferredTqdmProgressReporter({"leave": False}) if settings.progress else None
            Downloader(client).download_file(url, target, pbar=pbar)
            try:
                check_export(target)
            except CorruptDownload:
                target.unlink(missing_ok=True)
                raise
            return target

        return with_retries(attempt, f"download of job {job_id}'s export", policy)
    except NotFoundException:
        raise ExportError(f"job {job_id}: export not found on the server (deleted meanwhile?)") from None
    except ApiException as error:
        raise ExportError(f"job {job_id}: export failed: {describe_error(error)}") from None
    except RetriesExhausted as error:
        raise CvatError(f"job {job_id}: {error}. Nothing of this job entered the dataset; "
                        f"rerun later to continue (jobs already pulled are kept)") from None


def _wait_for_export(client: Client, job_id: int, rq_id: str, policy: RetryPolicy,
                     settings: ExportSettings) -> str:
    deadline = time.monotonic() + settings.timeout
    while True:
        request = with_retries(lambda: client.api_client.requests_api.retrieve(rq_id)[0],
                               f"status of job {job_id}'s export", policy)
        status = str(request.status.value)
        if status == "finished":
            result_url = request.get("result_url")
            if not result_url:
                raise ExportError(f"job {job_id}: the export finished without a download URL "
                                  f"(is the task's target storage a cloud storage?)")
            return str(result_url)
        if status == "failed":
            raise ExportError(f"job {job_id}: CVAT could not export it: {request.get('message') or 'no reason given'}")
        if time.monotonic() > deadline:
            raise ExportError(f"job {job_id}: the export was not ready after {settings.timeout:.0f} s "
                              f"(status {status}); raise --export-timeout")
        time.sleep(settings.poll_period)


def _same_server(client: Client, url: str) -> str:
    """Absolute URL on the CVAT host: the download carries our credentials, never to another host."""
    host = client.api_map.host
    absolute = urljoin(host + "/", url)
    if urlsplit(absolute)[:2] != urlsplit(host)[:2]:
        raise ExportError(f"the export's download URL points to another server ({urlsplit(absolute).netloc}); "
                          f"refusing to send the CVAT credentials there")
    return absolute


@dataclass(frozen=True)
class ExportContents:
    """A checked export: its annotations and the zip member of every image."""

    document: CvatDocument
    members: dict[str, str]  # image name -> zip member


def check_export(path: Path, *, verify_crc: bool = True) -> ExportContents:
    """Everything a CVAT 1.1 export with images must be; CorruptDownload if the file is damaged.

    ``verify_crc`` reads every member once (done right after the download; later readers skip it).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip() if verify_crc else None
            if bad is not None:
                raise CorruptDownload(f"{path.name}: member {bad!r} fails its CRC check")
            return _contents(path, archive)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
        raise CorruptDownload(f"{path.name} is not a complete zip file ({error})") from None


def _contents(path: Path, archive: zipfile.ZipFile) -> ExportContents:
    infos = archive.infolist()
    if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED_BYTES:
        raise ExportError(f"{path.name}: unpacks to more than {MAX_UNCOMPRESSED_BYTES >> 30} GiB; refused")
    names = {info.filename for info in infos if not info.is_dir()}
    for name in names:
        if not safe_member(name):
            raise ExportError(f"{path.name}: unsafe member name {name!r}; refused")
    if ANNOTATIONS not in names:
        raise ExportError(f"{path.name} has no {ANNOTATIONS}: not a '{EXPORT_FORMAT}' export")
    try:
        document = CvatDocument.from_bytes(archive.read(ANNOTATIONS), source=f"{path.name}:{ANNOTATIONS}")
    except CvatXmlError as error:
        raise ExportError(str(error)) from None
    members = {}
    for image in document.images:
        member = IMAGES_PREFIX + image.name
        if not safe_member(member) or member not in names:
            raise ExportError(f"{path.name}: no file for image {image.name!r} (exported without images?)")
        members[image.name] = member
    return ExportContents(document, members)


def safe_member(name: str) -> bool:
    """Relative, normalised, no ``..``: extracting it cannot escape the target folder."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or ":" in name.split("/")[0]:
        return False
    normal = posixpath.normpath(name)
    return normal == name.rstrip("/") and not normal.startswith("..") and "/../" not in f"/{normal}/"
