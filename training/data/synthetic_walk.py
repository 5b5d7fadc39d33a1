"""Walk-through runs: consecutive frames of one synthetic scene with small camera moves.

Site footage is mostly near-duplicates: a walk-through films the same guardrail from positions a
step apart, a fixed camera films it all day. A *run* of length ``L`` is ``L`` such frames: one
scene rendered a little larger than the frame (``1 + 2 * PAN`` times each side), and a frame-sized
window panning across it along a straight line, one step per frame, each frame with its own small
exposure change and sensor noise (so no two frames are byte-identical). Masks are the window's crop
of the scene's masks; an instance cut down below the scene's minimum area leaves the frame.

Everything is a pure function of ``(seed, split, run, frame)``; the scene seed carries a marker no
plain sample uses (``render_sample`` seeds with three numbers, a run with four), so turning walk
runs on never changes what an existing seed renders. The window sees a scene 1.1x the frame, so
parts are 10 % larger relative to the frame than in a plain sample, pixel minimums scaled the same:
compare walk frames with walk frames (a run of length 1 is a single view).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from .synthetic_scene import SceneInstance, SyntheticScene, render_scene

PAN = 0.05
"""How far the window may move from the centre, each way, as a fraction of the frame size."""
_MARKER = 0x57414C4B  # "WALK": a fourth seed word no plain sample uses
_MIN_AREA_PX = 20.0  # as the scene renderer: instances with fewer visible pixels are dropped
_REF_AREA = 240 * 320


def parse_lengths(text: str) -> tuple[int, ...]:
    """``"4x40,10x8,3"`` -> four runs of 40 frames, ten of 8, one of 3 (the CLI's syntax)."""
    lengths: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        count, _, length = part.rpartition("x")
        try:
            runs, frames = (int(count) if count else 1), int(length)
        except ValueError:
            raise ValueError(f"run lengths: expected e.g. '4x40,10x8,3', got {part!r}") from None
        if runs < 1 or frames < 1:
            raise ValueError(f"run lengths must be positive, got {part!r}")
        lengths += [frames] * runs
    if not lengths:
        raise ValueError("run lengths: no run given")
    return tuple(lengths)


def run_positions(lengths: Sequence[int]) -> list[tuple[int, int, int]]:
    """``(run, frame, length)`` of every image, runs one after another in order."""
    return [(run, frame, length) for run, length in enumerate(lengths) for frame in range(length)]


@functools.lru_cache(maxsize=4)
def _base_scene(seed: int, split_id: int, run: int, shape: tuple[int, int]) -> SyntheticScene:
    """The run's scene, ``1 + 2 * PAN`` times the frame; cached: a run's frames are rendered in order."""
    rng = np.random.default_rng([seed, split_id, run, _MARKER])
    height, width = shape
    return render_scene(rng, round(height * (1 + 2 * PAN)), round(width * (1 + 2 * PAN)))


def render_walk_frame(seed: int, split_id: int, run: int, frame: int, length: int,
                      shape: tuple[int, int]) -> SyntheticScene:
    """Frame ``frame`` of run ``run`` (of ``length`` frames) at ``shape`` = (height, width)."""
    if not 0 <= frame < length:
        raise ValueError(f"frame {frame} outside a run of {length}")
    base = _base_scene(seed, split_id, run, shape)
    height, width = shape
    room_y, room_x = base.image.shape[0] - height, base.image.shape[1] - width
    path = np.random.default_rng([seed, split_id, run, _MARKER, 1])
    start, end = path.uniform(0, 1, 2), path.uniform(0, 1, 2)  # window corners as fractions of the room
    t = frame / (length - 1) if length > 1 else 0.5
    fy, fx = start + (end - start) * t
    y0, x0 = round(fy * room_y), round(fx * room_x)
    frame_rng = np.random.default_rng([seed, split_id, run, _MARKER, 2, frame])
    pixels = base.image[y0:y0 + height, x0:x0 + width].astype(np.float32)
    pixels *= np.float32(frame_rng.uniform(0.96, 1.04))
    pixels += frame_rng.normal(0, 2.0, pixels.shape).astype(np.float32)
    image = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
    min_area = max(8.0, _MIN_AREA_PX * height * width / _REF_AREA)
    instances = []
    for instance in base.instances:
        mask = instance.mask[y0:y0 + height, x0:x0 + width]
        if mask.sum() >= min_area:
            instances.append(SceneInstance(instance.class_name, instance.class_id, mask.copy(), instance.run))
    return SyntheticScene(image, instances)


def shape_rng(seed: int, split_id: int, run: int) -> np.random.Generator:
    """The generator a run's frame shape is drawn from (as a plain sample's, from the run's own seed)."""
    return np.random.default_rng([seed, split_id, run, _MARKER, 0])


def describe(lengths: Sequence[int]) -> str:
    """``"6 runs, 61 frames (longest 40, 3 single frames, median 4)"`` for logs."""
    if not lengths:
        return "no runs"
    singles = sum(1 for n in lengths if n == 1)
    return (f"{len(lengths)} runs, {sum(lengths)} frames (longest {max(lengths)}, {singles} single frames, "
            f"median {int(np.median(lengths))})")
