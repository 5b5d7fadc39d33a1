"""Everything one sync-and-train invocation is asked to do (filled by the CLI, or by code)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

from cvat_sdk.core.client import Client

from .cvat_client import Selection
from .deploy import Deployment
from .export import ExportSettings
from .gate import GateCriteria
from .retry import RetryPolicy


class ExitCode(IntEnum):
    OK = 0              # also: nothing new, or the gate kept the deployed model
    USAGE = 2           # bad options, inconsistent workdir
    CVAT = 3            # connection, credentials, selection or export failed
    TRAINING = 4        # training or evaluation failed; nothing deployed
    DEPLOY = 5          # packaging or deploy.sh failed; the deployed model is unchanged
    BUSY = 6            # another run holds the workdir
    INTERRUPTED = 130   # Ctrl-C / SIGTERM; --resume continues


@dataclass(frozen=True)
class Outcome:
    """Exit code, the summary printed at the end, and the run folder (if a run started)."""

    code: ExitCode
    message: str
    run_dir: Path | None = None


class AfterRound(Protocol):
    """A step run after every concluded round, deployed or not (``--select``: choose the next frames
    and create their task). Its dict goes into the round's report as ``selection``; a dict with an
    ``error`` makes the run exit 3 without undoing the round. The sync loop knows the step by this
    shape only: the command line plugs :mod:`barrier_annotator.selection` in, so the loop does not
    import what imports it."""

    def __call__(self, client: Client, *, workdir: Path, selection: Selection, round_number: int,
                 deployed: Deployment | None, labelled_keys: Iterable[str], retry: RetryPolicy,
                 export: ExportSettings, progress: bool) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SyncOptions:
    host: str
    workdir: Path
    selection: Selection
    config_file: Path | None = None
    auth_user: str | None = None           # None: token from CVAT_ACCESS_TOKEN
    organization: str | None = None
    insecure: bool = False
    val_percent: int | None = None         # None: the dataset's (20 for a new one)
    init_weights: str = "deployed"         # deployed | config | none | path or URL
    iterations: int | None = None
    num_gpus: int = 1
    opts: tuple[str, ...] = ()
    criteria: GateCriteria = field(default_factory=GateCriteria)
    baseline_weights: str | None = None
    deploy_script: Path | None = None     # None: deploy.sh of the source checkout
    gpu: bool = False
    no_deploy: bool = False
    deploy_timeout: float | None = None
    dry_run: bool = False
    pull_only: bool = False
    resume: bool = False
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    export: ExportSettings = field(default_factory=ExportSettings)
    progress: bool = True
    after_round: AfterRound | None = None  # --select N: choose the next frames, create their task

    @property
    def staging(self) -> Path:
        return self.workdir / "staging"

    @property
    def dataset_root(self) -> Path:
        return self.workdir / "dataset"
