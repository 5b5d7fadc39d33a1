"""What a selection run writes, each file atomically (a killed run leaves the old file or the new one).

    <output>/selection.json    the run: strategy, seed, model, counts, skipped frames, the chosen
                               frames in rank order with their scores and why
    <output>/selection.csv     the chosen frames, one row each: rank, frame, content hash, scores, why
    <output>/scores.csv        every candidate's scores, and its rank where chosen
    <output>/contact_sheet.jpg the chosen frames with the model's masks, in rank order
    <output>/scores.png        the candidates' uncertainty, the chosen ones marked
    <output>/history/selection-<run>.json   every run's selection.json, kept
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mask2former.structures import Instances
from mask2former.utils import atomic_open, atomic_write_json, atomic_write_with

from .uncertainty import SIGNALS

COLUMNS = ("rank", "frame", "key", "uncertainty", *SIGNALS, "distance", "instances", "why")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else ""
    if isinstance(value, Mapping):
        return " ".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(column, row.get("signals", {}).get(column))) for column in COLUMNS])
    with atomic_open(path, "w") as handle:
        handle.write(buffer.getvalue())


def write_selection(output: Path, run_id: str, document: Mapping[str, Any], chosen: Sequence[Mapping[str, Any]],
                    candidates: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """``selection.json`` (+ its copy in ``history/``), ``selection.csv`` and ``scores.csv``."""
    paths = {"json": output / "selection.json", "csv": output / "selection.csv", "scores": output / "scores.csv"}
    atomic_write_json(output / "history" / f"selection-{run_id}.json", document)
    atomic_write_json(paths["json"], document)
    write_csv(paths["csv"], chosen)
    write_csv(paths["scores"], candidates)
    return paths


def contact_sheet(path: Path, items: Sequence[tuple[np.ndarray, Instances, str]], *, title: str | None = None,
                  width: int = 320) -> Path | None:
    """The chosen frames with their predicted masks, in rank order (``items``: image, instances, caption),
    drawn by the project's contact sheet; written as JPEG, atomically."""
    if not items:
        return None
    from ..contact_sheet import contact_sheet as draw_sheet
    from ..visualize import save_rgb

    sheet = draw_sheet([image for image, _, _ in items], [instances for _, instances, _ in items],
                       captions=[caption for _, _, caption in items], title=title, tile_width=width)
    return save_rgb(path, sheet, jpeg_quality=88)


def score_plot(path: Path, uncertainty: Sequence[float], chosen: Sequence[float], title: str) -> Path:
    """Histogram of the candidates' uncertainty with the chosen frames' values marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.0, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    values = np.asarray(uncertainty, dtype=np.float64)
    axes.hist(values, bins=min(40, max(5, len(values) // 4)), color="#9aa7b5", label=f"candidates ({len(values)})")
    for index, value in enumerate(chosen):
        axes.axvline(value, color="#c0392b", linewidth=1, alpha=0.8, label="chosen" if index == 0 else None)
    axes.set_xlabel("uncertainty (mean of the signals, 0..1)")
    axes.set_ylabel("frames")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write_with(path, lambda handle: figure.savefig(handle, format="png"))
    return path
