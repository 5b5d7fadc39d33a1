"""The run report: ``report.json`` (everything, machine-readable), ``report.md`` and a per-class AP plot.

The report is written for every run that reaches a decision or fails after pulling, so "why was
(or wasn't) the model deployed?" always has an answer on disk.
"""

from __future__ import annotations

import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mask2former.utils import atomic_open, atomic_write_json, atomic_write_with

from .gate import class_key, metric_key

logger = logging.getLogger(__name__)

PLOT_FILE = "per_class_ap.png"


def _num(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.2f}"


def write_report(run_dir: Path, report: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Path]:
    """``report.json``, ``report.md`` and (with metrics) ``per_class_ap.png`` in ``run_dir``."""
    paths = {"json": run_dir / "report.json", "markdown": run_dir / "report.md"}
    metrics = report.get("metrics") or {}
    if metrics.get("candidate"):
        plot = plot_per_class(run_dir / PLOT_FILE, metrics.get("candidate"), metrics.get("reference"),
                              metrics.get("reference_name") or "deployed", class_names, metrics.get("metric", "AP"))
        if plot is not None:
            paths["plot"] = plot
    data = dict(report)
    data["files"] = {k: str(v) for k, v in paths.items()}
    atomic_write_json(paths["json"], data)  # NaN/inf -> null
    with atomic_open(paths["markdown"], "w") as handle:
        handle.write(render_markdown(data, class_names))
    return paths


def render_markdown(report: Mapping[str, Any], class_names: Sequence[str]) -> str:
    lines = [f"# Sync-and-train run {report.get('run_id', '?')}", ""]
    decision = report.get("decision") or {}
    lines += [f"**Outcome:** {report.get('outcome', '?')}", ""]
    if report.get("held_back"):
        lines += ["**Held back because:**", ""] + [f"- {reason}" for reason in report["held_back"]] + [""]
    if decision:
        lines += ["## Decision", "", decision.get("summary", ""), ""]
        lines += ["| check | result | detail |", "|---|---|---|"]
        lines += [f"| {c['name']} | {'pass' if c['passed'] else 'FAIL'} | {c['detail']} |"
                  for c in decision.get("checks", [])]
        lines.append("")
    data = report.get("dataset") or {}
    if data:
        lines += ["## Data", "", f"Round {data.get('round')} of the dataset in `{data.get('root')}` "
                  f"(val: {data.get('val_percent')}% of images by content hash).", ""]
        downloaded = [job for job in data.get("pulled_jobs", []) if job.get("reason") != "withdrawn"]
        lines += [f"- jobs pulled by this run: {len(downloaded)}; in this round: "
                  f"{len(data.get('round_jobs', {}))}",
                  f"- images new / changed / removed / withdrawn / returned in this round: "
                  f"{data.get('new_images', 0)} / {data.get('changed_images', 0)} / {data.get('removed_images', 0)}"
                  f" / {data.get('withdrawn_images', 0)} / {data.get('returned_images', 0)}",
                  f"- images train / val: {data.get('images', {}).get('train', 0)} / "
                  f"{data.get('images', {}).get('val', 0)}", ""]
        for job in data.get("pulled_jobs", []):
            if job.get("reason") == "withdrawn":
                continue  # listed below with the round's withdrawals
            lines.append(f"  - job {job['job_id']} (task {job['task_id']} {job.get('task_name', '')!r}, "
                         f"updated {job.get('updated_date')}): {job['images']} images, {job['new']} new, "
                         f"{job['changed']} changed, {job['removed']} removed, {job.get('returned', 0)} returned")
        for job_id, job in data.get("withdrawn_jobs", {}).items():
            lines.append(f"  - job {job_id} (task {job['task_id']} {job.get('task_name', '')!r}) left the "
                         f"selection: {job.get('reason') or 'no reason recorded'}; {job['images']} images withdrawn "
                         f"(kept in the manifest; they return if the job is finished again)")
        for job_id, job in data.get("returned_jobs", {}).items():
            lines.append(f"  - job {job_id} (task {job['task_id']} {job.get('task_name', '')!r}) is back in the "
                         f"selection: {job['images']} images returned")
        instances = data.get("instances", {})
        labels = list(dict.fromkeys([*class_names, *instances.get("train", {}), *instances.get("val", {})]))
        lines += ["", "| class | train instances | val instances |", "|---|---|---|"]
        lines += [f"| {name} | {instances.get('train', {}).get(name, 0)} | {instances.get('val', {}).get(name, 0)} |"
                  for name in labels]
        other = {k: v for split in ("train", "val") for k, v in data.get("other_shapes", {}).get(split, {}).items()}
        if other:
            lines += ["", f"Shapes that cannot train a mask model (skipped): {other}"]
        lines.append("")
    training = report.get("training") or {}
    if training:
        shown = {k: (" ".join(v) if k == "opts" else v) for k, v in training.items() if k != "metrics" and v != []}
        lines += ["## Training", ""] + [f"- {key}: `{value}`" for key, value in shown.items()] + [""]
    metrics = report.get("metrics") or {}
    if metrics.get("candidate"):
        key = metric_key(metrics.get("metric", "AP"))
        name = metrics.get("reference_name") if metrics.get("reference") is not None else "(no reference)"
        old, new = metrics.get("reference") or {}, metrics["candidate"]
        lines += ["## Metrics (same val set)", "", f"| metric | {name} | candidate | change |", "|---|---|---|---|"]
        rows = [key, metric_key("AP50"), metric_key("AP75"), *(class_key(key, c) for c in class_names)]
        for row in dict.fromkeys(rows):
            a, b = old.get(row), new.get(row)
            change = _num(b - a) if isinstance(a, int | float) and isinstance(b, int | float) else "–"
            lines.append(f"| {row} | {_num(a)} | {_num(b)} | {change} |")
        if "plot" in report.get("files", {}):
            lines += ["", f"![per-class AP]({PLOT_FILE})"]
        lines.append("")
    deployment = report.get("deployment") or {}
    if deployment:
        shown = {k: (shlex.join(v) if k == "command" else v) for k, v in deployment.items()}
        lines += ["## Deployment", ""] + [f"- {key}: `{value}`" for key, value in shown.items()] + [""]
    lines += _selection_lines(report.get("selection"))
    if report.get("error"):
        lines += ["## Error", "", f"```\n{report['error']}\n```", ""]
    return "\n".join(lines)


def _selection_lines(selection: Mapping[str, Any] | None) -> list[str]:
    """``--select``: the frames chosen for labelling next, why, and the task they went to."""
    if not selection:
        return []
    lines = ["## Next frames to label (--select)", ""]
    if selection.get("error"):
        lines += [f"Selection failed: {selection['error']}", ""]
    if selection.get("reason"):
        lines += [selection["reason"], ""]
    if selection.get("strategy"):
        model = selection.get("model") or {}
        counts = selection.get("counts") or {}
        lines += [f"Strategy `{selection['strategy']}`, {len(selection.get('chosen', []))} of "
                  f"{counts.get('candidates', '?')} candidate frames chosen ({selection.get('source', '')}), "
                  f"scored by the model of run {model.get('run')} (round {model.get('round')}).", ""]
    task = selection.get("task") or {}
    if task:
        lines += [f"CVAT task {task.get('id')} `{task.get('name')}`: {task.get('frames')} frames, "
                  f"{task.get('shapes')} pre-labelled shapes (source semi-auto), status {task.get('status')}.", ""]
    if selection.get("chosen"):
        lines += ["| rank | frame | uncertainty | why |", "|---|---|---|---|"]
        lines += [f"| {row['rank']} | {row['frame']} | {row['uncertainty']:.3f} | {row['why']} |"
                  for row in selection["chosen"]]
        lines.append("")
    return lines


def plot_per_class(path: Path, candidate: Mapping[str, float], reference: Mapping[str, float] | None,
                   reference_name: str, class_names: Sequence[str], metric: str) -> Path | None:
    """Grouped bars: overall and per-class metric, reference vs candidate (missing values as 0, hatched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # plots are a convenience; the numbers are in the JSON and Markdown
        logger.warning("matplotlib not available: no plot")
        return None
    key = metric_key(metric)
    groups = ["all", *class_names]
    keys = [key, *(class_key(key, name) for name in class_names)]

    def values(metrics: Mapping[str, float] | None) -> list[float | None]:
        out = []
        for k in keys:
            v = None if metrics is None else metrics.get(k)
            out.append(v if isinstance(v, int | float) and math.isfinite(v) else None)
        return out

    figure = Figure(figsize=(1.4 * len(groups) + 2, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.38
    series = [("candidate", values(candidate), "#1f77b4", width / 2)]
    if reference is not None:
        series.insert(0, (reference_name, values(reference), "#aaaaaa", -width / 2))
    for label, vals, color, offset in series:
        xs = [i + (offset if reference is not None else 0) for i in range(len(groups))]
        axes.bar(xs, [v or 0.0 for v in vals], width, label=label, color=color,
                 hatch=None, edgecolor="black", linewidth=0.5)
        for x, v in zip(xs, vals, strict=True):
            axes.annotate("n/a" if v is None else f"{v:.1f}", (x, v or 0.0), ha="center", va="bottom", fontsize=7)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(key)
    axes.set_ylim(0, max(100.0, 1.0))
    axes.legend(loc="upper right", fontsize=8)
    axes.set_title(f"{key}: {reference_name if reference is not None else 'no reference'} vs candidate")
    figure.tight_layout()
    atomic_write_with(path, lambda handle: figure.savefig(handle, format="png"))
    return path
