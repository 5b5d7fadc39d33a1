"""Connecting to CVAT with cvat-sdk and selecting the finished work to learn from.

Credentials come from the environment (``CVAT_ACCESS_TOKEN``) or ``--auth USER`` with the password
in ``CVAT_PASSWORD`` or typed at a prompt (only on a terminal); never from the command line, where
other users could read them. The unit of work is a CVAT *job*: by default only jobs in stage
"acceptance" and state "completed" (a task may be partly finished).
"""

from __future__ import annotations

import getpass
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import urllib3
from cvat_sdk.api_client import rest
from cvat_sdk.api_client.exceptions import ApiException, ForbiddenException, NotFoundException, UnauthorizedException
from cvat_sdk.core.client import AccessTokenCredentials, Client, Config, PasswordCredentials
from cvat_sdk.core.exceptions import CvatSdkException

from .redact import register_secret
from .retry import RetriesExhausted, RetryPolicy, describe_error, with_retries

logger = logging.getLogger(__name__)

TOKEN_ENV = "CVAT_ACCESS_TOKEN"
PASSWORD_ENV = "CVAT_PASSWORD"


class CvatError(RuntimeError):
    """A CVAT problem the user can act on; the message says which and what to do."""


class CvatAuthError(CvatError):
    """CVAT refused the credentials (or none were given)."""


@dataclass(frozen=True, repr=False)
class Credentials:
    """A token, or a user and password. ``repr`` never shows the secret."""

    secret: str
    user: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, secret=***)" if self.user else "Credentials(token=***)"

    def sdk(self) -> AccessTokenCredentials | PasswordCredentials:
        return PasswordCredentials(self.user, self.secret) if self.user else AccessTokenCredentials(self.secret)

    @property
    def description(self) -> str:
        return f"the password of {self.user!r}" if self.user else f"the access token in {TOKEN_ENV}"


def read_credentials(user: str | None, env: Mapping[str, str] | None = None,
                     prompt: Callable[[str], str] = getpass.getpass,
                     interactive: bool | None = None) -> Credentials:
    """``--auth USER``: password from ``CVAT_PASSWORD`` or a prompt on a TTY; else the token env var."""
    env = os.environ if env is None else env
    if interactive is None:
        interactive = sys.stdin.isatty()
    if user:
        password = env.get(PASSWORD_ENV)
        if not password:
            if not interactive:
                raise CvatAuthError(f"--auth {user}: set {PASSWORD_ENV} (no terminal to ask for the password)")
            password = prompt(f"CVAT password for {user}: ")
        if not password:
            raise CvatAuthError(f"--auth {user}: empty password")
        register_secret(password)
        return Credentials(password, user)
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise CvatAuthError(f"no CVAT credentials: set {TOKEN_ENV} to a Personal Access Token "
                            f"(CVAT: user menu > Settings > Access tokens), or use --auth USER")
    register_secret(token)
    return Credentials(token)


def no_transport_retries(client: Client) -> None:
    """Rebuild the SDK's REST client without urllib3's own retries: :mod:`.retry` is the one policy.

    (cvat-sdk sets ``Retry(total=3, status_forcelist=502-504)``, which would multiply our attempts
    and sleep outside our control; redirects are still followed.)
    """
    configuration = client.api_client.configuration
    configuration.retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)
    client.api_client.rest_client = rest.RESTClientObject(configuration)
    # The SDK's Configuration pins the "urllib3" and "cvat_sdk.api_client" loggers to WARNING; let them
    # follow the application's level (-v shows requests). Header dumps (configuration.debug) stay off.
    for sdk_logger in configuration.logger.values():
        sdk_logger.setLevel(logging.NOTSET)


def connect(host: str, credentials: Credentials, *, policy: RetryPolicy, organization: str | None = None,
            insecure: bool = False, status_check_period: float = 2.0) -> Client:
    """A logged-in client whose credentials were checked (GET /api/users/self)."""
    try:
        client = Client(host, config=Config(verify_ssl=not insecure, status_check_period=status_check_period),
                        check_server_version=False, logger=logging.getLogger("barrier_annotator.sync.cvat_sdk"))
    except CvatSdkException as error:
        raise CvatError(f"--host {host!r}: {error}") from None
    no_transport_retries(client)
    where = client.api_map.host
    try:
        with_retries(client.check_server_version, f"GET {where}/api/server/about", policy)
        with_retries(lambda: client.login(credentials.sdk()), f"login to {where}", policy)
        if organization is not None:
            client.organization_slug = organization
        with_retries(lambda: client.api_client.users_api.retrieve_self(), f"GET {where}/api/users/self", policy)
    except (UnauthorizedException, ForbiddenException) as error:
        raise CvatAuthError(_auth_message(where, credentials, organization, error)) from None
    except ApiException as error:
        if credentials.user and error.status == 400:  # CVAT answers a wrong password with 400
            raise CvatAuthError(_auth_message(where, credentials, organization, error)) from None
        raise CvatError(f"CVAT at {where}: {describe_error(error)}") from None
    except RetriesExhausted as error:
        raise CvatError(f"cannot talk to CVAT at {where}: {error}") from None
    return client


def _auth_message(where: str, credentials: Credentials, organization: str | None, error: ApiException) -> str:
    refused = f"CVAT at {where} rejected {credentials.description} ({describe_error(error)})"
    if error.status == 403 and organization:
        return (f"CVAT at {where} refused access to organization {organization!r} ({describe_error(error)}): "
                f"check --org and the user's membership")
    if credentials.user:
        return f"{refused}; check the user name and {PASSWORD_ENV}"
    return (f"{refused}. Create a new token in CVAT (user menu > Settings > Access tokens) and set {TOKEN_ENV}, "
            f"or use --auth USER with {PASSWORD_ENV}")


@dataclass(frozen=True)
class JobInfo:
    """The fields of a CVAT job that selection, the manifest and the report use."""

    id: int
    task_id: int
    task_name: str
    project_id: int | None
    stage: str
    state: str
    updated_date: str  # ISO 8601, as CVAT reports it
    start_frame: int
    stop_frame: int

    @property
    def frames(self) -> int:
        return self.stop_frame - self.start_frame + 1


@dataclass(frozen=True)
class Selection:
    """What to pull: projects and/or tasks; ``stage``/``state`` None means any."""

    projects: Sequence[int] = ()
    tasks: Sequence[int] = ()
    stage: str | None = "acceptance"
    state: str | None = "completed"

    def describe(self) -> str:
        where = [f"project {p}" for p in self.projects] + [f"task {t}" for t in self.tasks]
        which = "all jobs" if self.stage is None and self.state is None else \
            f"jobs in stage {self.stage or 'any'}, state {self.state or 'any'}"
        return f"{which} of {', '.join(where)}"


def select_jobs(client: Client, selection: Selection, policy: RetryPolicy) -> list[JobInfo]:
    """The annotation jobs of the selected projects/tasks that match stage and state, by id."""
    if not selection.projects and not selection.tasks:
        raise CvatError("nothing selected: give --project ID and/or --task ID")
    filters = {key: value for key, value in (("stage", selection.stage), ("state", selection.state)) if value}
    found: dict[int, JobInfo] = {}
    scopes = [("project", p, client.projects) for p in selection.projects] + \
             [("task", t, client.tasks) for t in selection.tasks]
    for kind, object_id, repo in scopes:
        try:
            with_retries(lambda repo=repo, i=object_id: repo.retrieve(i), f"GET {kind} {object_id}", policy)
            jobs = with_retries(
                lambda kind=kind, i=object_id: client.jobs.list(**{f"{kind}_id": i}, type="annotation", **filters),
                f"list the jobs of {kind} {object_id}", policy)
        except NotFoundException:
            raise CvatError(f"{kind} {object_id} not found on {client.api_map.host} (or not visible to this "
                            f"user{' in this organization' if client.organization_slug else ''})") from None
        except ForbiddenException as error:
            raise CvatAuthError(f"no permission to read {kind} {object_id}: {describe_error(error)}") from None
        except ApiException as error:
            raise CvatError(f"{kind} {object_id}: {describe_error(error)}") from None
        except RetriesExhausted as error:
            raise CvatError(f"cannot list the jobs of {kind} {object_id}: {error}") from None
        for job in jobs:
            found[job.id] = _job_info(job)
    return [found[i] for i in sorted(found)]


def _job_info(job: object) -> JobInfo:
    def text(value: object) -> str:
        return str(getattr(value, "value", value) or "")

    updated = job.updated_date
    task_name = getattr(job, "task_name", None) or f"task {job.task_id}"
    return JobInfo(id=int(job.id), task_id=int(job.task_id), task_name=str(task_name),
                   project_id=getattr(job, "project_id", None), stage=text(job.stage), state=text(job.state),
                   updated_date=updated.isoformat() if hasattr(updated, "isoformat") else str(updated),
                   start_frame=int(job.start_frame), stop_frame=int(job.stop_frame))


def departure_reason(client: Client, job_id: int, selection: Selection, policy: RetryPolicy) -> str:
    """Why a pulled job is no longer selected, in words for the log and the report (asks CVAT)."""
    try:
        job = with_retries(lambda: client.jobs.retrieve(job_id), f"GET job {job_id}", policy)
    except NotFoundException:
        return "deleted in CVAT (the job or its task)"
    except (ApiException, RetriesExhausted) as error:
        return f"no longer in the selection (its current state is unknown: {describe_error(error)})"
    info = _job_info(job)
    now = f"now stage {info.stage or '?'}, state {info.state or '?'}"
    in_scope = info.task_id in selection.tasks or \
        (info.project_id is not None and info.project_id in selection.projects)
    if not in_scope:
        return f"its task {info.task_id} is outside the selection now (project {info.project_id}; {now})"
    if selection.stage and info.stage != selection.stage:
        return f"moved to stage {info.stage} ({now})"
    if selection.state and info.state != selection.state:
        return f"reopened ({now})" if selection.state == "completed" else f"state changed ({now})"
    return f"no longer in the selection ({now})"
