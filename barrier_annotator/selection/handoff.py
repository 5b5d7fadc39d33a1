"""Handing a selection to CVAT: stage the task folder, create the task, keep the ledger in step.

The ledger records the selection's task as *pending* before anything is sent, and every step of
the creation after it succeeds, so a run killed between "task created" and "annotations uploaded"
is finished by the next run (``finish_pending``) rather than repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cvat_sdk.core.client import Client

from ..cvat import LabelInfo, LabelSpec
from ..sync.cvat_client import CvatError
from .cvat_task import create_prelabelled_task
from .ledger import Ledger
from .prelabels import StagedTask, stage_task
from .run import SelectionResult

logger = logging.getLogger(__name__)


def task_folder(output: Path, run_id: str) -> Path:
    return output / f"task_{run_id}"


def cvat_labels(client: Client, project_id: int | None = None, task_id: int | None = None) -> list[LabelInfo]:
    """The labels (name, type, colour) of a project or task, as CVAT lists them."""
    owner = client.projects.retrieve(project_id) if project_id is not None else client.tasks.retrieve(task_id)
    return [LabelInfo(label.name, str(getattr(label, "type", None) or "any"), getattr(label, "color", None))
            for label in owner.get_labels()]


def hand_over(client: Client, result: SelectionResult, ledger: Ledger, output: Path, *, name: str,
              project_id: int | None, labels: Sequence[LabelInfo], class_names: Sequence[str],
              polygons: bool = False) -> dict[str, Any]:
    """Stage the chosen frames with their pre-labels and create the task; returns the task's state."""
    if not labels:
        raise CvatError("the new task would have no labels: the project (or source task) declares none")
    staged = stage_task(task_folder(output, result.run_id), result.chosen,
                        [LabelSpec(label.name, label.type or "any", label.color) for label in labels],
                        class_names, task_name=name, polygons=polygons)
    return _create(client, ledger, result.run_id, staged, name=name, project_id=project_id, labels=labels, state={})


def _create(client: Client, ledger: Ledger, run_id: str, staged: StagedTask, *, name: str, project_id: int | None,
            labels: Sequence[LabelInfo], state: dict[str, Any]) -> dict[str, Any]:
    base = {"name": name, "project_id": project_id, "folder": str(staged.folder), "shapes": staged.shapes,
            "labels": [[label.name, label.type, label.color] for label in labels]}
    ledger.update_task(run_id, {**base, **state, "status": state.get("status", "pending")})

    def step(current: dict[str, Any]) -> None:
        ledger.update_task(run_id, {**base, **current})

    done = create_prelabelled_task(client, staged, name=name, project_id=project_id, labels=labels, state=state,
                                   on_step=step)
    return {**base, **done}


def finish_pending(client: Client, ledger: Ledger) -> tuple[str, dict[str, Any]] | None:
    """Finish the latest selection whose task creation did not complete; None when there is none."""
    pending = ledger.pending()
    if pending is None:
        return None
    run_id, selection = pending
    task = dict(selection["task"])
    folder = Path(task["folder"])
    if not (folder / "annotations.xml").is_file():
        raise CvatError(f"selection {run_id} waits for its task {task['name']!r}, but its folder {folder} is gone; "
                        f"restore it, or remove the selection's 'task' entry from {ledger.path}")
    images = sorted((folder / "images").iterdir())
    staged = StagedTask(folder, images, folder / "annotations.xml", {}, int(task.get("shapes", 0)))
    labels = [LabelInfo(n, t, c) for n, t, c in task.get("labels", [])]
    logger.info("selection %s: finishing its task %r (%s)", run_id, task["name"], task.get("status"))
    state = {k: v for k, v in task.items() if k in ("id", "status", "frames")}
    if state.get("status") == "pending":
        state = {}
    done = _create(client, ledger, run_id, staged, name=task["name"], project_id=task.get("project_id"),
                   labels=labels, state=state)
    return run_id, done
