"""Loading detectron2-format checkpoints safely, with a report of every key that did not fit.

Two file kinds exist in the wild: model-zoo ``.pkl`` files (plain pickles of
``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": True}``) and
``model_final.pth`` files (torch pickles of ``{"model": {name: tensor}, "optimizer": ...}``).
Both are pickles, which can run code when loaded: ``.pkl`` files go through an unpickler that
only knows numpy arrays, ``.pth`` files through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# Keys that depend on the number of classes: skipped (with a report) when finetuning 80 -> 4.
CLASS_HEAD_KEYS = ("sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias",
                   "criterion.empty_weight")
# Extras of ImageNet classification checkpoints that a detection backbone has no use for.
_CLASSIFIER_ONLY = ("head.", "norm.", "fc.", "avgpool.")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asks the unpickler for something other than arrays: refused, never executed."""


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the config's model; the message names the keys."""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name}: a weights pickle may only contain arrays"
            )
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)

    def persistent_load(self, pid: object) -> object:
        raise UnsafeCheckpointError("refusing a pickle with persistent ids (not a model-zoo .pkl)")


def _safe_numpy_globals() -> list:
    """numpy objects that ``torch.load(weights_only=True)`` may rebuild inside a ``.pth``."""
    return [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray, np.dtype,
            *{type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8", "u1", "b1")}]


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint as a dict with a ``"model"`` state dict of tensors (plus whatever else it holds)."""
    path = Path(path)
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)) or path.suffix in (".pth", ".pt"):
        try:
            with torch.serialization.safe_globals(_safe_numpy_globals()):
                content = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(error))
            what = found.group(1) if found else "an object that is not a tensor"
            raise UnsafeCheckpointError(
                f"{path}: refused: the file asks to build {what}; weights files may only hold tensors"
            ) from error
        except (RuntimeError, EOFError) as error:
            raise CheckpointMismatchError(f"{path}: not a readable torch checkpoint: {error}") from error
    else:
        try:
            content = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
        except UnsafeCheckpointError as error:
            raise UnsafeCheckpointError(f"{path}: {error}") from error
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise CheckpointMismatchError(f"{path}: not a readable pickle: {error}") from error
    if not isinstance(content, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a dict, found {type(content).__name__}")
    content = dict(content)
    state = content.get("model", content)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{path}: 'model' is a {type(state).__name__}, not a state dict")
    content["model"] = _as_tensors(state, path)
    return content


def _as_tensors(state: Mapping, path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            continue  # metadata such as "__author__" inside a flat dict
        key = key[len("module.") :] if key.startswith("module.") else key
        tensors[key] = value
    if not tensors:
        raise CheckpointMismatchError(f"{path}: contains no weights")
    return tensors


@dataclass
class WeightsReport:
    """What happened to every key; ``summary()`` is what users read in the log."""

    source: str
    loaded: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    class_head_skipped: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    backbone_only: bool = False

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.unexpected or (self.missing and not self.backbone_only))

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors"]
        if self.renamed:
            lines.append(f"  converted {len(self.renamed)} legacy/pretrained key names, e.g. "
                         f"{self.renamed[0][0]} -> {self.renamed[0][1]}")
        if self.class_head_skipped:
            old = self.class_head_skipped[0][1][0] - 1
            new = self.class_head_skipped[0][2][0] - 1
            keys = ", ".join(key for key, _, _ in self.class_head_skipped)
            lines.append(f"  class head re-initialised ({old} -> {new} classes, expected when finetuning): {keys}")
        if self.backbone_only:
            lines.append(f"  backbone-only checkpoint: {len(self.missing)} head tensors start from random init")
        for title, keys, described in (
            ("shape mismatch", self.mismatched, [f"{k} {a} vs model {b}" for k, a, b in self.mismatched]),
            ("unexpected (in checkpoint, not in model)", self.unexpected, describe_keys(self.unexpected)),
            ("missing (in model, not in checkpoint)", self.missing,
             [] if self.backbone_only else describe_keys(self.missing)),
        ):
            if described:
                shown = "\n    ".join(described[:12])
                more = f"\n    ... and {len(described) - 12} more" if len(described) > 12 else ""
                lines.append(f"  {title}: {len(keys)}\n    {shown}{more}")
        return "\n".join(lines)


def _natural(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def describe_keys(keys: list[str]) -> list[str]:
    """Readable key list: runs of numbered blocks collapse into ``prefix.{6-17}.* (N tensors)``."""
    groups: dict[str, list[tuple[int, str]]] = {}
    singles = []
    for key in sorted(keys, key=_natural):
        parts = key.split(".")
        numbered = [i for i, part in enumerate(parts) if part.isdigit()]
        if not numbered:
            singles.append(key)
            continue
        last = numbered[-1]
        groups.setdefault(".".join(parts[:last]), []).append((int(parts[last]), key))
    lines = []
    for prefix, members in groups.items():
        indices = sorted({index for index, _ in members})
        if len(indices) == 1:
            lines.extend(key for _, key in members)
            continue
        runs, start = [], indices[0]
        for previous, current in zip(indices, [*indices[1:], None], strict=True):
            if current != previous + 1:
                runs.append(str(start) if start == previous else f"{start}-{previous}")
                start = current
        lines.append(f"{prefix}.{{{','.join(runs)}}}.* ({len(members)} tensors)")
    return sorted(lines + singles, key=_natural)


def _legacy_name(key: str) -> str:
    """MaskFormer v1 layout: pixel-decoder keys sat directly under ``sem_seg_head``."""
    if key.startswith("sem_seg_head.") and not key.startswith(("sem_seg_head.predictor.",
                                                                "sem_seg_head.pixel_decoder.")):
        key = "sem_seg_head.pixel_decoder." + key[len("sem_seg_head.") :]
    if key.startswith("sem_seg_head.predictor.static_query"):
        key = key.replace("static_query", "query_feat", 1)
    return key


def _match_names(
    checkpoint_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor], report: WeightsReport
) -> dict[str, str]:
    """Checkpoint key -> model key: exact, legacy layout, then detectron2's longest-suffix heuristic.

    The suffix rule serves ImageNet backbone files whose keys lack the ``backbone.`` prefix; a
    suffix match also needs equal shapes, and a checkpoint key claimed twice is matched to nothing.
    """
    mapping = {}
    for key in checkpoint_state:
        target = key if key in model_state else _legacy_name(key)
        if target in model_state:
            mapping[key] = target
    claimed = set(mapping.values())
    unmatched = {key for key in checkpoint_state if key not in mapping}
    suffix_claims: dict[str, list[str]] = {}
    for model_key in model_state:
        if model_key in claimed:
            continue
        parts = model_key.split(".")
        for start in range(1, len(parts)):
            candidate = ".".join(parts[start:])
            if candidate in unmatched and checkpoint_state[candidate].shape == model_state[model_key].shape:
                suffix_claims.setdefault(candidate, []).append(model_key)
                break
    for key, model_keys in suffix_claims.items():
        if len(model_keys) == 1:
            mapping[key] = model_keys[0]
    report.renamed.extend((key, target) for key, target in mapping.items() if key != target)
    return mapping


def match_state_dict(
    model_state: Mapping[str, torch.Tensor], checkpoint_state: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], WeightsReport]:
    """The tensors to load (model key -> tensor) and the report; raises nothing, decides nothing."""
    report = WeightsReport(source=source)
    mapping = _match_names(checkpoint_state, model_state, report)
    to_load = {}
    for ckpt_key, model_key in mapping.items():
        value, expected = checkpoint_state[ckpt_key], model_state[model_key]
        if tuple(value.shape) == tuple(expected.shape):
            to_load[model_key] = value
            report.loaded.append(model_key)
        elif model_key in CLASS_HEAD_KEYS and value.shape[1:] == expected.shape[1:]:
            report.class_head_skipped.append((model_key, tuple(value.shape), tuple(expected.shape)))
        else:
            report.mismatched.append((model_key, tuple(value.shape), tuple(expected.shape)))
    skipped = {key for key, _, _ in report.class_head_skipped}
    report.missing = sorted(k for k in model_state if k not in to_load and k not in skipped
                            and k not in {m for m, _, _ in report.mismatched})
    unmatched = [k for k in checkpoint_state if k not in mapping]
    report.backbone_only = bool(to_load) and all(k.startswith("backbone.") for k in to_load)
    if report.backbone_only:
        unmatched = [k for k in unmatched if not k.startswith(_CLASSIFIER_ONLY) and not k.endswith("attn_mask")]
    report.unexpected = sorted(unmatched)
    return to_load, report


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> WeightsReport:
    """Load weights into ``model``; with ``strict`` any mismatch beyond the class head is an error.

    A backbone-only file (ImageNet-pretrained Swin/ResNet) leaves the head randomly initialised and
    says so. Nothing is copied into the model unless the whole checkpoint is acceptable.
    """
    content = read_checkpoint(path)
    to_load, report = match_state_dict(model.state_dict(), content["model"], str(path))
    if strict and not report.ok:
        raise CheckpointMismatchError(
            f"checkpoint does not match the model built from the config:\n{report.summary()}\n"
            "Check that MODEL.WEIGHTS belongs to this config (backbone size, number of queries)."
        )
    with torch.no_grad():
        state = model.state_dict()
        for key, value in to_load.items():
            state[key].copy_(value.to(state[key].dtype))
    logger.info("%s", report.summary())
    return report
