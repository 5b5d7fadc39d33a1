"""Pull: connect, select the finished jobs, withdraw the ones that left the selection, download the
changed ones, commit them, seal a round."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from cvat_sdk.core.client import Client

from .cvat_client import Credentials, JobInfo, connect, departure_reason, read_credentials, select_jobs
from .dataset_store import DatasetStore
from .export import download_job_export
from .options import SyncOptions

logger = logging.getLogger(__name__)

CredentialsReader = Callable[[str | None], Credentials]


@dataclass(frozen=True)
class Departure:
    """A pulled job no longer selected: its images leave the next round."""

    job_id: int
    task_id: int
    task_name: str
    images: int
    reason: str


@dataclass(frozen=True)
class Plan:
    """The selected jobs, which of them need pulling (and why), and the pulled jobs that left the selection."""

    jobs: list[JobInfo]
    to_pull: list[tuple[JobInfo, str]]
    departed: list[Departure] = field(default_factory=list)


def open_client(options: SyncOptions, credentials: CredentialsReader = read_credentials) -> Client:
    return connect(options.host, credentials(options.auth_user), policy=options.retry,
                   organization=options.organization, insecure=options.insecure,
                   status_check_period=options.export.poll_period)


def close_client(client: Client) -> None:
    try:
        if client.api_client.cookies.get("sessionid") is not None:
            client.logout()  # a password login opened a session; a token has none
    except Exception as error:  # closing is best effort
        logger.debug("logout failed: %s", error)
    client.close()


def plan(client: Client, options: SyncOptions, store: DatasetStore) -> Plan:
    jobs = select_jobs(client, options.selection, options.retry)
    to_pull = store.changed_jobs(jobs)
    departed = [Departure(job_id, entry["task_id"], entry["task_name"], entry.get("images", 0),
                          departure_reason(client, job_id, options.selection, options.retry))
                for job_id, entry in store.departed_jobs(jobs)]
    logger.info("%s: %d jobs, %d to pull, %d left the selection", options.selection.describe(), len(jobs),
                len(to_pull), len(departed))
    previous = store.selection_changed(options.selection.describe())
    if previous is not None and departed:
        logger.warning("this dataset was pulled with the selection '%s', now '%s': the jobs outside it are "
                       "withdrawn from the next round (they return when selected again)", previous,
                       options.selection.describe())
    if not jobs:
        logger.warning("no job matches (%s): nothing is finished yet?", options.selection.describe())
    return Plan(jobs, to_pull, departed)


def pull(options: SyncOptions, store: DatasetStore, credentials: CredentialsReader = read_credentials
         ) -> list[dict[str, Any]]:
    """Download and commit every changed job, then seal the pending changes into a round."""
    val_percent = store.val_percent(options.val_percent)
    client = open_client(options, credentials)
    pulled = []
    try:
        work = plan(client, options, store)
        store.manifest["selection"] = options.selection.describe()
        for gone in work.departed:
            count = store.withdraw(gone.job_id, gone.reason)
            logger.warning("job %d (task %d %r) %s: its %d images are withdrawn from the next round",
                           gone.job_id, gone.task_id, gone.task_name, gone.reason, count)
            pulled.append({"job_id": gone.job_id, "task_id": gone.task_id, "task_name": gone.task_name,
                           "reason": "withdrawn", "withdrawn": count, "detail": gone.reason})
        for number, (job, why) in enumerate(work.to_pull, start=1):
            logger.info("pulling job %d (%d of %d, %s; task %d %r, %d frames)", job.id, number, len(work.to_pull),
                        why, job.task_id, job.task_name, job.frames)
            archive = download_job_export(client, job.id, options.staging, options.retry, options.export)
            try:
                result = store.ingest(job, archive, val_percent)
            finally:
                archive.unlink(missing_ok=True)
            logger.info("job %d: %d images (%d new, %d changed, %d removed, %d returned)", job.id, result.images,
                        result.new, result.changed, result.removed, result.returned)
            pulled.append({**asdict(result), "task_id": job.task_id, "task_name": job.task_name,
                           "updated_date": job.updated_date, "reason": why})
    finally:
        close_client(client)
        shutil.rmtree(options.staging, ignore_errors=True)
    store.seal_round()
    return pulled
