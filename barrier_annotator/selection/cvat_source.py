"""``barrier-select``'s CVAT side: the connection, the pool of a project or task, where a new task goes.

The credentials rules are the sync loop's (``CVAT_ACCESS_TOKEN``, or ``--auth USER`` with
``CVAT_PASSWORD``), as is the retry policy for every read.
"""

from __future__ import annotations

import argparse

from cvat_sdk.core.client import Client

from ..cvat import LabelInfo
from ..sync.cvat_client import CvatError, Selection, connect, read_credentials
from ..sync.export import ExportSettings
from ..sync.retry import RetryPolicy
from .cvat_pool import cvat_pool
from .frames import FramePool
from .handoff import cvat_labels


def retry_policy(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(attempts=args.retries, backoff=args.retry_backoff)


def open_client(args: argparse.Namespace) -> Client:
    return connect(args.host, read_credentials(args.auth), policy=retry_policy(args), organization=args.organization,
                   insecure=args.insecure, status_check_period=args.poll_period)


def pool_from_cvat(client: Client, args: argparse.Namespace
                   ) -> tuple[FramePool, frozenset[str], list[LabelInfo] | None, int | None]:
    """The pool, the content hashes of completed frames, and (with ``--create-task``) the new task's
    labels and project."""
    selection = Selection(tuple(args.project), tuple(args.task), None, None)
    found = cvat_pool(client, selection, args.output / "cvat", retry_policy(args),
                      settings=ExportSettings(poll_period=args.poll_period, timeout=args.export_timeout,
                                              progress=args.progress is not False))
    labels, project = None, None
    if args.create_task:
        projects = set(args.project) | found.projects
        if len(projects) > 1:
            raise CvatError(f"the frames come from projects {sorted(projects)}: --create-task needs one project; "
                            f"select one --project")
        if projects:
            project = projects.pop()
            labels = cvat_labels(client, project_id=project)
        else:
            labels = cvat_labels(client, task_id=args.task[0])
    return found.pool, frozenset(found.completed_keys), labels, project
