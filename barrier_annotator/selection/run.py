"""One selection run: score the pool (resumably), choose, write the outputs, commit the choice.

Order, which makes a killed run safe to repeat:

1. scores go to the score cache as frames are scored (a rerun reuses them);
2. the chosen frames are predicted once more for the contact sheet and the pre-labels (the same
   instances the scoring pass saw: batch size 1, same model);
3. ``selection.json``/``.csv``, ``scores.csv``, the pictures: each written atomically;
4. the ledger (``chosen.json``) records the chosen frames: the commit point. Until then a rerun
   chooses again (from the cached scores); after it, they are never chosen again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mask2former.io import decode_image
from mask2former.structures import Instances

from .frames import FramePool
from .ledger import Ledger
from .outputs import contact_sheet, score_plot, write_selection
from .score_cache import ScoreCache
from .scorer import FrameScorer
from .scoring_pass import SKIP_REASONS, Scored, ScoredPool, score_pool
from .strategies import Pick, select
from .uncertainty import describe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectOptions:
    """``exclude``: content hashes never to choose (frames labelled elsewhere, e.g. in a completed
    CVAT job); ``model``: the model's identity (``labelling.model_identity``) for the score cache."""

    output: Path
    count: int
    strategy: str = "hybrid"
    seed: int = 0
    ledger: Path | None = None
    model: Mapping[str, Any] = field(default_factory=dict)
    exclude: frozenset[str] = frozenset()
    workers: int = 2
    progress: bool | None = None
    pictures: bool = True

    @property
    def ledger_path(self) -> Path:
        return self.ledger or self.output / "chosen.json"


@dataclass
class ChosenFrame:
    """A chosen frame with its scores, why, and (for pictures and pre-labels) its image and instances."""

    scored: Scored
    pick: Pick
    why: str
    image: np.ndarray | None = None
    instances: Instances | None = None

    def row(self, names: Mapping[int, str]) -> dict[str, Any]:
        score = self.scored.score
        nearest = None if self.pick.nearest is None else names.get(self.pick.nearest)
        return {"rank": self.pick.rank, "frame": self.scored.frame.name, "key": score.key,
                "uncertainty": score.uncertainty, "signals": dict(score.signals), "distance": self.pick.distance,
                "nearest": nearest, "instances": dict(score.instances), "why": self.why,
                "origin": dict(self.scored.frame.origin)}


@dataclass
class SelectionResult:
    run_id: str
    chosen: list[ChosenFrame]
    scored: ScoredPool
    excluded: dict[str, int]
    files: dict[str, str]
    document: dict[str, Any]

    @property
    def exit_code(self) -> int:
        """0: every frame scored; 1: some were skipped (listed)."""
        return 1 if self.scored.skipped_count else 0


def new_run_id(output: Path) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id, suffix = stamp, 1
    while (output / "history" / f"selection-{run_id}.json").exists():
        suffix += 1
        run_id = f"{stamp}-{suffix}"
    return run_id


def _why(pick: Pick, scored: Scored, scorer: FrameScorer, names: Mapping[int, str]) -> str:
    parts = [pick.reason]
    if pick.nearest is not None and pick.nearest in names:
        parts.append(f"nearest: {names[pick.nearest]}")
    if scored.score.signals:
        parts.append(describe(scored.score.signals, scorer.settings.uncertainty))
    return "; ".join(parts)


def choose_frames(scorer: FrameScorer, pool: FramePool, options: SelectOptions) -> SelectionResult:
    """Score, choose ``options.count`` frames, write the outputs, record them in the ledger."""
    if options.count < 1:
        raise ValueError(f"the number of frames to choose must be at least 1, got {options.count}")
    options.output.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(options.ledger_path)
    identity = scorer.identity(dict(options.model))
    cache = ScoreCache(options.output / "scores" / f"{identity}.jsonl")
    if cache.scores:
        logger.info("resuming: %d frame score(s) of this model in %s", len(cache.scores), cache.path)
    scored = score_pool(scorer, pool, cache, workers=options.workers, progress=options.progress)
    labelled_keys = {item.score.key for item in scored.labelled}
    excluded = {"chosen_before": 0, "labelled": 0}
    candidates: list[Scored] = []
    for item in scored.candidates:
        key = item.score.key
        if key in ledger:
            excluded["chosen_before"] += 1
        elif key in options.exclude or key in labelled_keys:
            excluded["labelled"] += 1
        else:
            candidates.append(item)
    uncertainty = np.array([item.score.uncertainty for item in candidates], dtype=np.float64)
    embeddings = np.stack([item.score.embedding for item in candidates]) if candidates else np.zeros((0, 1))
    labelled = np.stack([item.score.embedding for item in scored.labelled]) if scored.labelled else None
    picks = select(options.strategy, options.count, uncertainty=uncertainty, embeddings=embeddings,
                   labelled=labelled, seed=options.seed)
    names = {index: item.frame.name for index, item in enumerate(candidates)}
    names.update({-1 - index: item.frame.name for index, item in enumerate(scored.labelled)})
    chosen = [ChosenFrame(candidates[pick.index], pick, _why(pick, candidates[pick.index], scorer, names))
              for pick in picks]
    for frame in chosen:  # predicted again (same result as scoring): pictures and pre-labels
        frame.image = decode_image(frame.scored.frame.path.read_bytes())
        frame.instances = scorer.instances(frame.image)

    run_id = new_run_id(options.output)
    rank_of = {frame.scored.score.key: frame.pick.rank for frame in chosen}
    rows = [frame.row(names) for frame in chosen]
    candidate_rows = [{"rank": rank_of.get(item.score.key), "frame": item.frame.name, "key": item.score.key,
                       "uncertainty": item.score.uncertainty, "signals": dict(item.score.signals),
                       "instances": dict(item.score.instances)} for item in candidates]
    document = {
        "format": "barrier-annotator/selection", "run_id": run_id, "strategy": options.strategy,
        "seed": options.seed, "requested": options.count, "source": pool.description,
        "model": {**dict(options.model), "backend": scorer.description, "threshold": scorer.predictor.score_threshold},
        "counts": {"frames": len(pool.candidates) + len(pool.labelled), "candidates": len(candidates),
                   "labelled": len(scored.labelled), "scored": scored.scored, "reused_scores": scored.reused,
                   "duplicates": len(scored.duplicates), **{f"excluded_{k}": v for k, v in excluded.items()},
                   "skipped": scored.skipped_count, "chosen": len(chosen)},
        "skipped": {reason: items for reason, items in sorted(scored.skipped.items())},
        "skip_reasons": {reason: SKIP_REASONS.get(reason, reason) for reason in scored.skipped},
        "duplicates": scored.duplicates, "scoring_seconds": round(scored.seconds, 2), "chosen": rows,
    }
    files = {name: str(path) for name, path in write_selection(options.output, run_id, document, rows,
                                                               candidate_rows).items()}
    if options.pictures:
        sheet = contact_sheet(options.output / "contact_sheet.jpg", [
            (frame.image, frame.instances, f"rank {frame.pick.rank}: {os.path.basename(frame.scored.frame.name)}, "
                                           f"uncertainty {frame.scored.score.uncertainty:.2f}")
            for frame in chosen if frame.image is not None and frame.instances is not None],
            title=f"{options.strategy}: {len(chosen)} frame(s) to label next, in rank order")
        if sheet is not None:
            files["contact_sheet"] = str(sheet)
        if len(candidates):
            files["score_plot"] = str(score_plot(
                options.output / "scores.png", uncertainty, [frame.scored.score.uncertainty for frame in chosen],
                f"{options.strategy}: {len(chosen)} of {len(candidates)} candidates chosen"))
    ledger.record(run_id, [{"key": row["key"], "name": row["frame"], "rank": row["rank"]} for row in rows],
                  {"strategy": options.strategy, "seed": options.seed, "count": len(rows),
                   "selection": str(options.output / "history" / f"selection-{run_id}.json")})
    return SelectionResult(run_id, chosen, scored, excluded, files, document)
