"""Per-run progress (``runs/<id>/state.json``) for ``--resume``, and the workdir lock.

Steps, in order: pulled, trained, evaluated, decided, deployed, reported. Each is recorded when it
completes, with what later steps need, so a rerun with ``--resume`` continues after the last one.
A rerun without ``--resume`` marks the unfinished run abandoned and starts clean; the dataset
itself never needs resuming (it commits per job).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mask2former.utils import atomic_write_json

logger = logging.getLogger(__name__)

STEPS = ("pulled", "trained", "evaluated", "decided", "deployed", "selected", "reported")
STATE_FILE = "state.json"
UNFINISHED = ("running", "failed")


class WorkdirBusy(RuntimeError):
    """Another sync-and-train holds the workdir lock."""


class RunState:
    """One run's folder and state file."""

    def __init__(self, directory: Path, data: dict[str, Any]) -> None:
        self.dir = directory
        self.data = data

    @property
    def id(self) -> str:
        return self.data["run_id"]

    @property
    def status(self) -> str:
        return self.data["status"]

    @classmethod
    def load(cls, directory: Path) -> RunState:
        path = directory / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no run state {path}")
        return cls(directory, json.loads(path.read_text(encoding="utf-8")))

    def done(self, step: str) -> bool:
        return step in self.data["steps"]

    def step(self, step: str) -> dict[str, Any]:
        return self.data["steps"][step]

    def record(self, step: str, **info: Any) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}")
        self.data["steps"][step] = info
        self.data["status"] = "running"
        self.data.pop("error", None)
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        if error:
            self.data["error"] = error
        self.save()

    def save(self) -> None:
        self.data["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        atomic_write_json(self.dir / STATE_FILE, self.data)


def new_run(workdir: Path, round_number: int) -> RunState:
    runs = workdir / "runs"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id, suffix = stamp, 1
    while (runs / run_id).exists():
        suffix += 1
        run_id = f"{stamp}-{suffix}"
    directory = runs / run_id
    directory.mkdir(parents=True)
    state = RunState(directory, {"run_id": run_id, "round": round_number, "status": "running", "steps": {},
                                 "started": datetime.now(UTC).isoformat(timespec="seconds")})
    state.save()
    return state


def latest_unfinished(workdir: Path) -> RunState | None:
    """The newest run that is still running (interrupted) or failed."""
    runs = workdir / "runs"
    if not runs.is_dir():
        return None
    for directory in sorted((p for p in runs.iterdir() if p.is_dir()), key=_run_order, reverse=True):
        path = directory / STATE_FILE
        if not path.is_file():
            continue
        state = RunState.load(directory)
        return state if state.status in UNFINISHED else None
    return None


def _run_order(directory: Path) -> tuple[str, int]:
    stamp, _, suffix = directory.name.partition("-")
    return stamp, int(suffix) if suffix.isdigit() else 1


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Exclusive for the whole run: two runs would interleave pulls and deployments."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle = open(workdir / ".lock", "a+")  # noqa: SIM115 - held for the block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"another sync-and-train is running on {workdir} (lock {workdir / '.lock'})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()
