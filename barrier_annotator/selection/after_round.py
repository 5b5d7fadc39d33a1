"""``barrier-sync-train --select N``: after a round, choose the next N frames and create their CVAT task.

Runs after every concluded round, whatever the gate decided, with the model that is deployed once
the round is over: the new one when the round deployed it, else the one still deployed. That is
the model annotators' pre-labels and CVAT's function come from, so its uncertainty is what the
next labels should fix. Without any deployed model (a first round held back) nothing is chosen
and the report says why: a model that failed the gate would pre-label badly.

The candidates are the frames of the selection's jobs that are not completed (:mod:`.cvat_pool`);
frames of completed jobs and every frame already in the training set (by content hash) are never
chosen, nor is a frame chosen by an earlier round (the ledger ``<workdir>/selection/chosen.json``).
A task whose creation was cut off is finished first, before anything new is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvat_sdk.core.client import Client

from mask2former.config import load_config
from mask2former.predictor import Predictor

from ..labelling import model_identity
from ..sync.cvat_client import CvatError, Selection
from ..sync.deploy import Deployment
from ..sync.export import ExportSettings
from ..sync.retry import RetryPolicy
from .cvat_pool import cvat_pool
from .handoff import cvat_labels, finish_pending, hand_over
from .ledger import Ledger
from .run import SelectOptions, choose_frames
from .scorer import FrameScorer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundSelection:
    """What ``--select`` asks for: how many frames, the strategy, the new task's name (``{round}`` is
    replaced), the backend scoring runs on (None: the config's)."""

    count: int
    strategy: str = "hybrid"
    task_name: str = "barrier-select round {round}"
    backend: str | None = None
    seed: int = 0


def selection_root(workdir: Path) -> Path:
    return workdir / "selection"


def select_after_round(client: Client, request: RoundSelection, *, workdir: Path, selection: Selection,
                       round_number: int, deployed: Deployment | None, labelled_keys: Iterable[str],
                       retry: RetryPolicy, export: ExportSettings, progress: bool = True) -> dict[str, Any]:
    """Choose ``request.count`` frames with the deployed model and create their task; the report's
    ``selection`` section (what was chosen and why, the task), also when nothing could be chosen."""
    root = selection_root(workdir)
    ledger = Ledger(root / "chosen.json")
    finished = finish_pending(client, ledger)
    if finished is not None:
        run_id, task = finished
        logger.info("finished the task of an earlier selection (%s): task %s", run_id, task.get("id"))
    if deployed is None:
        return {"chosen": [], "reason": "no model is deployed yet: nothing chosen (the pre-labels would come "
                                        "from a model that did not pass the gate)"}
    cfg = load_config(deployed.config)
    predictor = Predictor(cfg, weights=deployed.weights, backend=request.backend)
    scorer = FrameScorer(predictor)
    found = cvat_pool(client, Selection(selection.projects, selection.tasks, None, None), root / "cvat", retry,
                      settings=export, labelled_jobs=False)
    projects = set(selection.projects) | found.projects
    if len(projects) != 1:
        raise CvatError(f"--select creates the task in one project; the selection spans {sorted(projects) or 'none'}")
    project = projects.pop()
    exclude = frozenset(found.completed_keys) | frozenset(labelled_keys)
    if not found.pool.candidates:
        return {"chosen": [], "reason": "no frame of a not-completed job to choose from",
                "source": found.pool.description}
    result = choose_frames(scorer, found.pool, SelectOptions(
        output=root, count=request.count, strategy=request.strategy, seed=request.seed + round_number,
        ledger=ledger.path, model=model_identity(cfg, deployed.weights), exclude=exclude, progress=progress))
    summary: dict[str, Any] = {
        "strategy": request.strategy, "requested": request.count, "run_id": result.run_id,
        "model": {"run": deployed.run_id, "round": deployed.round, "weights": deployed.weights},
        "source": found.pool.description, "counts": result.document["counts"],
        "skipped": result.document["skipped"], "files": result.files,
        "chosen": [{"rank": frame.pick.rank, "frame": frame.scored.frame.name, "key": frame.scored.score.key,
                    "uncertainty": round(frame.scored.score.uncertainty, 4), "why": frame.why}
                   for frame in result.chosen]}
    if not result.chosen:
        summary["reason"] = "every candidate was chosen before, is labelled, or could not be read"
        return summary
    name = request.task_name.format(round=round_number)
    summary["task"] = hand_over(client, result, Ledger(ledger.path), root, name=name, project_id=project,
                                labels=cvat_labels(client, project_id=project), class_names=predictor.class_names)
    return summary
