"""Deploy or not: the candidate against the deployed model (or a baseline) on the same val set.

Metrics are the engine's COCO mask numbers (``segm/AP``, ``segm/AP-<class>``, AP in 0..100). The
candidate must clear every check; each failed check is a reason in the report.

Whatever the options, a candidate whose mask AP is 0 or NaN (it finds nothing, or nothing was
measured) or whose val set holds no instance is never deployed. Before the first deployment the
candidate must also reach :data:`FIRST_DEPLOYMENT_MIN_AP` unless ``--min-ap`` says otherwise:
comparing with nothing, any model would pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


def metric_key(name: str) -> str:
    """``AP`` -> ``segm/AP``; full keys pass through."""
    return name if "/" in name else f"segm/{name}"


def class_key(metric: str, class_name: str) -> str:
    return f"{metric_key(metric)}-{class_name}"


FIRST_DEPLOYMENT_MIN_AP = 10.0
"""Default floor of the candidate's metric while no model is deployed. Below ~10 mask AP most
predicted masks need redrawing: deleting them costs annotators more than drawing from scratch."""


@dataclass(frozen=True)
class GateCriteria:
    metric: str = "AP"
    margin: float = 0.5           # the candidate must beat the reference by this much (may be negative)
    min_metric: float | None = None  # floor of the candidate's metric; None: FIRST_DEPLOYMENT_MIN_AP before
    #                                  the first deployment, no floor after it (the deployed model is the bar)
    class_floors: Mapping[str, float] = field(default_factory=dict)  # class -> minimum per-class metric
    max_class_drop: float | None = None  # no class may fall more than this below the reference


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Decision:
    deploy: bool
    summary: str
    checks: tuple[Check, ...]
    reference: str  # "deployed", "baseline" or "none"

    @property
    def reasons(self) -> list[str]:
        return [check.detail for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"deploy": self.deploy, "summary": self.summary, "reference": self.reference,
                "checks": [asdict(check) for check in self.checks]}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _value(metrics: Mapping[str, float] | None, key: str) -> float | None:
    if metrics is None or key not in metrics:
        return None
    value = metrics[key]
    return float(value) if value is not None and math.isfinite(float(value)) else None


def floor_for(criteria: GateCriteria, reference_name: str | None) -> float | None:
    """The candidate's floor: ``--min-ap`` if given, else the first-deployment default while none is deployed."""
    if criteria.min_metric is not None:
        return criteria.min_metric
    return None if reference_name == "deployed" else FIRST_DEPLOYMENT_MIN_AP


def decide(candidate: Mapping[str, float | None], reference: Mapping[str, float | None] | None,
           criteria: GateCriteria, *, reference_name: str = "deployed", val_instances: int | None = None
           ) -> Decision:
    """Every check of ``criteria``; deploy only when all pass. ``val_instances``: ground-truth
    instances of the val set (0 means the evaluation measured nothing)."""
    key = metric_key(criteria.metric)
    new = _value(candidate, key)
    checks = _measured(candidate, val_instances)
    if new is None:
        if key != metric_key("AP"):  # a missing mask AP is reported by _measured
            checks.append(Check("candidate metric", False, f"the candidate has no {key} (no val instances?)"))
    else:
        floor = floor_for(criteria, reference_name if reference is not None else None)
        if floor is not None:
            first = " (first deployment; --min-ap sets it)" if criteria.min_metric is None else ""
            checks.append(Check("minimum", new >= floor, f"{key} {_fmt(new)} {'>=' if new >= floor else '<'} "
                                                         f"minimum {_fmt(floor)}{first}"))
    if reference is not None:
        old = _value(reference, key)
        if old is None:
            checks.append(Check("reference", new is not None,
                                f"the {reference_name} model has no {key}; compared on the minimum only"))
        elif new is not None:
            needed = old + criteria.margin
            checks.append(Check("margin", new >= needed,
                                f"{key} {_fmt(new)} vs {reference_name} {_fmt(old)}: "
                                f"{'beats' if new >= needed else 'does not beat'} it by the margin "
                                f"{criteria.margin:+.2f} (needs >= {_fmt(needed)})"))
    for class_name, floor in sorted(criteria.class_floors.items()):
        value = _value(candidate, class_key(key, class_name))
        passed = value is not None and value >= floor
        checks.append(Check(f"floor {class_name}", passed,
                            f"{class_name} {key.split('/')[-1]} {_fmt(value)} "
                            f"{'>=' if passed else 'below'} floor {_fmt(floor)}"
                            + ("" if value is not None else " (no val instances of this class)")))
    if criteria.max_class_drop is not None and reference is not None:
        for metric in sorted(k for k in candidate if k.startswith(f"{key}-")):
            new_class, old_class = _value(candidate, metric), _value(reference, metric)
            if new_class is None or old_class is None:
                continue
            passed = new_class >= old_class - criteria.max_class_drop
            checks.append(Check(f"drop {metric.split('-', 1)[1]}", passed,
                                f"{metric}: {_fmt(new_class)} vs {_fmt(old_class)} "
                                f"({'within' if passed else 'drops more than'} {criteria.max_class_drop:.2f})"))
    deploy = all(check.passed for check in checks)
    against = f"the {reference_name} model" if reference is not None else "no deployed model"
    if deploy:
        summary = f"deploy: the candidate passes every check against {against}"
    else:
        summary = "do not deploy: " + "; ".join(c.detail for c in checks if not c.passed)
    return Decision(deploy, summary, tuple(checks), reference_name if reference is not None else "none")


def _measured(candidate: Mapping[str, float | None], val_instances: int | None) -> list[Check]:
    """The checks no option turns off: something was measured and the model found something."""
    checks = []
    if val_instances is not None:
        checks.append(Check("val instances", val_instances > 0,
                            f"the val set has {val_instances} instances"
                            + ("" if val_instances > 0 else ": the evaluation measured nothing")))
    ap_key = metric_key("AP")
    ap = _value(candidate, ap_key)
    if ap is None:
        checks.append(Check("mask AP", False, f"the candidate has no {ap_key} (NaN: the evaluation saw no "
                                              f"instance)"))
    else:
        checks.append(Check("mask AP", ap > 0, f"{ap_key} {_fmt(ap)}" + (
            " > 0" if ap > 0 else ": the model finds nothing right; a model with AP 0 is never deployed")))
    return checks


def describe_criteria(criteria: GateCriteria, reference_name: str | None) -> str:
    """One sentence for dry runs and reports: what the candidate must do to be deployed."""
    key = metric_key(criteria.metric)
    floor = floor_for(criteria, reference_name)
    parts = [f"{metric_key('AP')} > 0"] + ([f"{key} >= {floor:.2f}"] if floor is not None else [])
    if reference_name:
        parts.append(f"{key} >= {reference_name} {key} {criteria.margin:+.2f}")
    parts += [f"{key.split('/')[-1]}-{name} >= {floor:.2f}" for name, floor in sorted(criteria.class_floors.items())]
    if criteria.max_class_drop is not None and reference_name:
        parts.append(f"no class more than {criteria.max_class_drop:.2f} below the {reference_name} model")
    return " and ".join(parts)
