"""``curves.png``: loss terms and mask AP over iterations, drawn from ``metrics.json``.

Uses matplotlib's object API with the Agg canvas directly: no pyplot state and no global
backend switch, so calling it inside another program (a GUI, a notebook) changes nothing there.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mask2former.utils import atomic_write_with

from .metrics import read_metrics

logger = logging.getLogger(__name__)

CURVES_FILE = "curves.png"
LOSS_KEYS = ("total_loss", "loss_ce", "loss_mask", "loss_dice")
AP_KEYS = ("AP", "AP50", "AP75")


def _series(lines: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for line in lines:
        value = line.get(key)
        if isinstance(value, (int, float)) and "iteration" in line:
            xs.append(int(line["iteration"]) + 1)  # iterations done, as the progress bar counts
            ys.append(float(value))
    return xs, ys


def _ap_prefix(lines: Sequence[dict[str, Any]]) -> str | None:
    """``segm`` for one test set; the first ``<dataset>/segm`` otherwise."""
    for line in lines:
        for key in line:
            if key.endswith("segm/AP"):
                return key[: -len("/AP")]
    return None


def plot_curves(metrics_path: str | Path, output_path: str | Path, title: str | None = None) -> Path | None:
    """Write the PNG (atomically); returns its path, or None when there is nothing to draw yet."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = read_metrics(metrics_path)
    if not lines:
        return None
    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, ap_axes = figure.subplots(1, 2)
    for key in LOSS_KEYS:
        xs, ys = _series(lines, key)
        if xs:
            loss_axes.plot(xs, ys, label=key, linewidth=1.6 if key == "total_loss" else 1.0)
    loss_axes.set_xlabel("iteration")
    loss_axes.set_ylabel("loss (median of 20 iterations)")
    if any(_series(lines, key)[0] for key in LOSS_KEYS):
        loss_axes.set_yscale("log")
        loss_axes.legend(loc="upper right", fontsize=8)
    loss_axes.grid(True, alpha=0.3)
    loss_axes.set_title("training losses")

    prefix = _ap_prefix(lines)
    if prefix is not None:
        for key in AP_KEYS:
            xs, ys = _series(lines, f"{prefix}/{key}")
            if xs:
                ap_axes.plot(xs, ys, marker="o", label=key)
        class_keys = sorted({key for line in lines for key in line if key.startswith(f"{prefix}/AP50-")})
        for key in class_keys:
            xs, ys = _series(lines, key)
            if xs:
                ap_axes.plot(xs, ys, linestyle="--", linewidth=0.9, label=key.split("/", 1)[-1])
        ap_axes.legend(loc="upper left", fontsize=7, ncol=2)
    ap_axes.set_xlabel("iteration")
    ap_axes.set_ylabel("mask AP (%)")
    ap_axes.set_ylim(0, 100)
    ap_axes.grid(True, alpha=0.3)
    ap_axes.set_title(f"validation ({prefix})" if prefix else "validation (no evaluation yet)")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    output_path = Path(output_path)
    atomic_write_with(output_path, lambda handle: handle.write(buffer.getvalue()))
    return output_path


def try_plot_curves(metrics_path: str | Path, output_path: str | Path, title: str | None = None) -> Path | None:
    """:func:`plot_curves` where a failed plot must not stop training (it is logged instead)."""
    try:
        return plot_curves(metrics_path, output_path, title)
    except Exception as error:  # a plot is a convenience; never lose a run over it
        logger.warning("could not draw %s: %s", output_path, error)
        return None
