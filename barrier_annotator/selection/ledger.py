"""The ledger of chosen frames: a frame chosen once is never chosen again.

``chosen.json`` maps a frame's content hash to when and why it was chosen and which CVAT task
received it. It is the selection's commit point: written atomically after the ranked outputs, so
a killed run either chose its frames (and a rerun skips them) or did not (and a rerun picks again).
A selection whose task could not be created stays *pending*: the next ``--create-task`` run creates
that task for the same frames instead of choosing new ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mask2former.utils import atomic_write_json

logger = logging.getLogger(__name__)

FORMAT = "barrier-annotator/selection-ledger"


class LedgerError(RuntimeError):
    """The ledger file exists but cannot be read: refusing to choose frames that may be chosen already."""


class Ledger:
    """``frames``: content hash -> entry; ``selections``: run id -> its summary (task state included)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames: dict[str, dict[str, Any]] = {}
        self.selections: dict[str, dict[str, Any]] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as error:
            raise LedgerError(f"{path}: unreadable ({error}); fix or move it (it lists the frames chosen "
                              f"before, which must not be chosen again)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LedgerError(f"{path}: not a selection ledger")
        self.frames = dict(data.get("frames", {}))
        self.selections = dict(data.get("selections", {}))

    def __contains__(self, key: str) -> bool:
        return key in self.frames

    def save(self) -> None:
        atomic_write_json(self.path, {"format": FORMAT, "frames": self.frames, "selections": self.selections})

    def record(self, run_id: str, frames: Iterable[Mapping[str, Any]], summary: Mapping[str, Any]) -> None:
        """Mark ``frames`` (each with ``key``, ``name``, ``rank``) chosen by run ``run_id``; saves."""
        when = datetime.now(UTC).isoformat(timespec="seconds")
        for frame in frames:
            self.frames[frame["key"]] = {"name": frame["name"], "run": run_id, "rank": frame["rank"], "chosen": when}
        self.selections[run_id] = {"chosen": when, **summary}
        self.save()

    def update_task(self, run_id: str, task: Mapping[str, Any]) -> None:
        self.selections[run_id]["task"] = dict(task)
        self.save()

    def pending(self) -> tuple[str, dict[str, Any]] | None:
        """The latest selection whose CVAT task was asked for and not finished, if any."""
        for run_id in sorted(self.selections, reverse=True):
            task = self.selections[run_id].get("task")
            if task and task.get("status") != "created":
                return run_id, self.selections[run_id]
        return None
