"""Active learning: which frames to label next (the ``barrier-select`` command's engine, also used by
``barrier-sync-train --select``).

- ``uncertainty``: per-frame signals from the network's raw outputs (queries near the score
  threshold, class entropy, unsure mask pixels, optional flip disagreement).
- ``network``: the network with a feature output (torch, or an OpenVINO graph with the extra output).
- ``scorer``: one frame -> signals, uncertainty, embedding and instances.
- ``strategies``: random, uncertainty, diversity (k-center greedy), hybrid; seeded.
- ``frames``: the pool (folder, export) and content hashes; ``cvat_pool``: a CVAT project's or
  task's open jobs; ``cvat_source``: the command line's CVAT side.
- ``score_cache``: resumable scoring; ``scoring_pass``: scoring a pool; ``ledger``: chosen once,
  never again.
- ``run``: one selection run and its commit order; ``outputs``: the files it writes.
- ``prelabels``: the new task's folder (frames + pre-labels); ``cvat_task``: creating it in CVAT;
  ``handoff``: both, in step with the ledger.
"""

from .frames import Frame, FramePool, SourceError, input_pool
from .ledger import Ledger, LedgerError
from .run import ChosenFrame, SelectionResult, SelectOptions, choose_frames
from .scorer import FrameScorer, ScorerSettings
from .strategies import STRATEGIES, Pick, select

__all__ = [
    "STRATEGIES",
    "ChosenFrame",
    "Frame",
    "FramePool",
    "FrameScorer",
    "Ledger",
    "LedgerError",
    "Pick",
    "ScorerSettings",
    "SelectOptions",
    "SelectionResult",
    "SourceError",
    "choose_frames",
    "input_pool",
    "select",
]
