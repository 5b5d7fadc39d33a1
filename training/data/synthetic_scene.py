"""Procedural construction-site guardrail scenes with exact instance masks.

A scene holds 1-3 guardrail *runs* standing on floor-slab edges. Each run is laid out in perspective:
its floor line and every rail converge on a vanishing point on the (rolled) horizon, so parts shrink
and posts bunch up with distance like on a photo. A run has posts, a top rail at 1 m, usually a mid
rail near 0.5 m and often a toeboard at the floor edge. Rails and toeboards are mounted in front of
the posts; nearer runs, then foreground occluders, cover farther things. Each part is stamped into a
label map in that depth order, so an instance mask is exactly the part's *visible* pixels and masks
never overlap. Thin parts get a minimum thickness in pixels so they stay learnable at ~320 px.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from .synthetic_backdrop import (
    add_occluders,
    finish_image,
    paint_background,
    scatter_distractors,
)
from .synthetic_paint import (
    Paint,
    TextureFn,
    fill_polygon,
    jitter,
    noise_field,
    pick_style,
)

CLASS_NAMES = ("rail_top", "rail_mid", "toeboard", "vertical_post")
RAIL_TOP, RAIL_MID, TOEBOARD, VERTICAL_POST = range(4)

#: Reference size: pixel minimums below are for 240x320 and scale with sqrt(area).
_REF_AREA = 240 * 320
_RAIL_MIN_PX = 5.5
_POST_MIN_PX = 5.5
_TOE_MIN_PX = 10.0
_FAR_HEIGHT_PX = 42.0  # smallest 1 m (top-rail) height, so a far run still separates its rails
_MIN_AREA_PX = 20.0  # instances with fewer visible pixels are dropped

Offset = Callable[[float], float]  # pixels along "up" as a function of the run parameter t
Part = tuple[int, np.ndarray, TextureFn]  # class id, polygon, texture


@dataclass(frozen=True)
class SceneInstance:
    """One visible barrier part; ``run`` numbers the guardrail run it belongs to (useful for checks)."""

    class_name: str
    class_id: int
    mask: np.ndarray
    run: int = 0

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class SyntheticScene:
    """A rendered image (HxWx3 uint8 RGB) and its instances (bool HxW masks of visible pixels)."""

    image: np.ndarray
    instances: list[SceneInstance] = field(default_factory=list)


@dataclass(frozen=True)
class _Run:
    """A straight guardrail run: floor-edge points and 1 m heights (px) at its near (0) and far (1) end."""

    b0: np.ndarray
    b1: np.ndarray
    h0: float
    h1: float
    shared_end: int | None = None  # end whose post belongs to the run this one turns a corner from

    def hull(self) -> np.ndarray:
        up = np.array([0.0, -1.0])
        return np.array([self.b0, self.b1, self.b1 + up * self.h1 * 1.05, self.b0 + up * self.h0 * 1.05],
                        np.float32)


def _convex_area(poly: np.ndarray) -> float:
    return float(cv2.contourArea(cv2.convexHull(poly)))


def _overlap_area(a: np.ndarray, b: np.ndarray) -> float:
    area, _ = cv2.intersectConvexConvex(cv2.convexHull(a), cv2.convexHull(b))
    return max(float(area), 0.0)


def _propose_run(rng: np.random.Generator, height: int, width: int, horizon_y: float, h_far: float,
                 h_ref: float, b_ref: np.ndarray | None, shared: bool) -> _Run | None:
    """One candidate run through ``b_ref`` (1 m = ``h_ref`` px there), receding or nearly frontal."""
    if b_ref is None:
        b_ref = np.array([rng.uniform(-0.15, 1.15) * width,
                          rng.uniform(h_ref * 1.08, height + 0.12 * h_ref)])
    receding = rng.random() < 0.55
    if receding:
        vx = rng.uniform(-0.4, 1.4) * width
    else:
        toward_centre = 1.0 if b_ref[0] < width / 2 else -1.0
        sign = toward_centre if rng.random() < 0.8 else -toward_centre
        vx = b_ref[0] + sign * rng.uniform(2.5, 12) * width
    vp = np.array([vx, horizon_y])
    offset = b_ref - vp
    if abs(offset[1]) > abs(offset[0]) * math.tan(math.radians(50)) or abs(offset[0]) < 0.25 * width:
        return None  # would run steeply up/down the frame; nothing to learn from a vertical rail
    distance = float(np.hypot(*offset))
    h_max = 0.7 * height
    # lambda scales the distance to the vanishing point; the 1 m height scales with it.
    if receding:
        lowest = max(h_far / h_ref, 0.2)
        far = rng.uniform(lowest, max(lowest, 0.75))
        lam = (far, 1.0) if (not shared or rng.random() < 0.6) else (1.0, min(1 / far, h_max / h_ref))
    else:
        short = rng.random() < 0.2
        length = (rng.uniform(1.2, 2.8) * h_ref) if short else rng.uniform(0.4, 1.2) * width
        lam = (max(1 - length / distance, h_far / h_ref), 1.0)
    if lam[1] - lam[0] < 0.02 or lam[0] * h_ref < h_far * 0.99:
        return None
    b_near, b_far = vp + offset * lam[1], vp + offset * lam[0]
    if float(np.hypot(*(b_near - b_far))) < 0.9 * h_ref * lam[0]:
        return None
    shared_end = None if not shared else (0 if lam[1] == 1.0 else 1)
    return _Run(b_near, b_far, h_ref * lam[1], h_ref * lam[0], shared_end)


def _layout_runs(rng: np.random.Generator, height: int, width: int, horizon_y: float,
                 scale: float) -> list[_Run]:
    """1-3 runs, mostly inside the frame and hardly overlapping; some turn a corner from another."""
    wanted = int(rng.choice([1, 2, 3], p=[0.45, 0.38, 0.17]))
    h_far = min(_FAR_HEIGHT_PX * scale, 0.3 * height)
    frame = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    runs: list[_Run] = []
    for _ in range(40):
        if len(runs) == wanted:
            break
        if runs and rng.random() < 0.3:
            parent = runs[int(rng.integers(len(runs)))]
            end = int(rng.integers(2))
            b_ref, h_ref = (parent.b0, parent.h0) if end == 0 else (parent.b1, parent.h1)
            run = _propose_run(rng, height, width, horizon_y, h_far, h_ref, b_ref, shared=True)
        else:
            lo, hi = (0.28, 0.62) if not runs else (0.15, 0.42)
            h_ref = min(rng.uniform(lo, hi) * height, 0.6 * width)
            h_ref = max(h_ref, h_far * 1.15)
            run = _propose_run(rng, height, width, horizon_y, h_far, h_ref, None, shared=False)
        if run is None:
            continue
        hull = run.hull()
        area = _convex_area(hull)
        inside = _overlap_area(hull, frame)
        if inside < 0.4 * area or inside < (30 * scale) ** 2:
            continue
        if any(_overlap_area(hull, other.hull()) > 0.12 * min(area, _convex_area(other.hull()))
               for other in runs):
            continue
        runs.append(run)
    return runs


class _RunPainter:
    """Builds and stamps the parts of one run (after camera roll) into the canvas and label map."""

    def __init__(self, rng: np.random.Generator, run: _Run, rotate: Callable[[np.ndarray], np.ndarray],
                 scale: float, light: float) -> None:
        self.rng, self.scale, self.light = rng, scale, light
        self.b0, self.b1 = rotate(run.b0), rotate(run.b1)
        self.up = rotate(np.array([0.0, -1.0])) - rotate(np.zeros(2))
        self.perp = np.array([-self.up[1], self.up[0]])
        self.h0, self.h1 = run.h0, run.h1
        self.shared_end = run.shared_end
        direction = self.b1 - self.b0
        self.length_px = float(np.hypot(*direction))
        self.inverse = np.linalg.inv(np.stack([direction, self.up], axis=1))
        # World length in metres (1 m = top-rail height): image length at the mean scale, stretched
        # by how strongly the run recedes (foreshortening hides most of a receding run's length).
        foreshortening = 1 + 1.2 * abs(math.log(self.h0 / self.h1))
        self.length_m = self.length_px / math.sqrt(self.h0 * self.h1) * foreshortening

    def height(self, t):  # float or array
        return self.h0 + (self.h1 - self.h0) * t

    def base(self, t: float) -> np.ndarray:
        return self.b0 + (self.b1 - self.b0) * t

    def t_of_world(self, s: float) -> float:
        """Image fraction of the point ``s`` of the way along the run in the world (perspective)."""
        return s * self.h0 / (s * self.h0 + (1 - s) * self.h1)

    def world_of_t(self, t: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`t_of_world`, for laying out stripes in metres."""
        return t * self.h1 / np.maximum(t * self.h1 + (1 - t) * self.h0, 1e-6)

    def post_ts(self, post_width: Offset) -> list[float]:
        """Post positions: equal world spacing of 1.4-2.6 m, fewer bays if far posts would merge."""
        spacing = self.rng.uniform(1.4, 2.6)
        bays = int(np.clip(round(self.length_m / spacing), 1, 14))
        while bays > 1 and self.length_px * (1 - self.t_of_world(1 - 1 / bays)) < 3.2 * post_width(self.h1):
            bays -= 1
        return [self.t_of_world(i / bays) for i in range(bays + 1)]

    def slab(self, canvas: np.ndarray, labels: np.ndarray, grain: np.ndarray) -> None:
        """The floor slab's edge face below the run (background: label 0, covers farther parts)."""
        depth = self.rng.uniform(0.12, 0.3)
        ta, tb = -0.2, 1.2
        poly = np.array([self.base(ta), self.base(tb), self.base(tb) - self.up * depth * self.height(tb),
                         self.base(ta) - self.up * depth * self.height(ta)])
        colour = jitter(self.rng, (118, 116, 112))

        def texture(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            return colour * (0.75 + 0.4 * grain[ys.astype(np.int64), xs.astype(np.int64)])[..., None]

        fill_polygon(canvas, poly, texture, labels=labels, label_value=0)

    def rail(self, ta: float, tb: float, lower: Offset, thick: Offset,
             paint: Paint) -> tuple[np.ndarray, TextureFn]:
        """A rail/toeboard quad from ``ta`` to ``tb``: ``lower(t)`` bottom edge and ``thick(t)`` in px."""
        corners = [(ta, lower(ta)), (tb, lower(tb)), (tb, lower(tb) + thick(tb)), (ta, lower(ta) + thick(ta))]
        poly = np.array([self.base(t) + self.up * offset for t, offset in corners])
        thick_a, thick_b = thick(ta), thick(tb)
        low_a, low_b = lower(ta), lower(tb)

        def texture(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            qx, qy = xs - self.b0[0], ys - self.b0[1]
            t = self.inverse[0, 0] * qx + self.inverse[0, 1] * qy
            beta = self.inverse[1, 0] * qx + self.inverse[1, 1] * qy
            frac = np.clip((t - ta) / max(tb - ta, 1e-6), 0, 1)
            half = (thick_a + (thick_b - thick_a) * frac) / 2
            centre = low_a + (low_b - low_a) * frac + half
            across = np.clip((beta - centre) / half, -1, 1)
            along = self.world_of_t(t) * self.length_m
            return paint.shade(along, across, across * half / self.height(t), 1.0)

        return poly, texture

    def post(self, t: float, width: float, foot: float, top: float,
             paint: Paint) -> tuple[np.ndarray, TextureFn]:
        """A post centred on the floor line at ``t``, from ``foot`` to ``top`` (fractions of 1 m)."""
        h = self.height(t)
        centre = self.base(t)
        half = self.perp * width / 2
        poly = np.array([centre + self.up * foot * h - half, centre + self.up * foot * h + half,
                         centre + self.up * top * h + half, centre + self.up * top * h - half])

        def texture(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
            qx, qy = xs - centre[0], ys - centre[1]
            across = np.clip((qx * self.perp[0] + qy * self.perp[1]) / (width / 2), -1, 1)
            along = (qx * self.up[0] + qy * self.up[1]) / h
            return paint.shade(along, across, across * width / 2 / h, self.light)

        return poly, texture

    def parts(self) -> list[Part]:
        """(class id, polygon, texture) of every part, back to front: posts, toeboard, mid, top rail."""
        rng, s = self.rng, self.scale
        style = pick_style(rng)
        post_frac = rng.uniform(0.055, 0.09)

        def post_width(h: float) -> float:
            return max(_POST_MIN_PX * s, post_frac * h)

        ts = self.post_ts(post_width)
        foot = -rng.uniform(0.06, 0.14) if rng.random() < 0.3 else 0.0
        cap = rng.uniform(0.0, 0.07)
        parts = [(VERTICAL_POST, *self.post(t, post_width(self.height(t)), foot, 1 + cap, style["post"]))
                 for i, t in enumerate(ts) if not (self.shared_end == 0 and i == 0)
                 and not (self.shared_end == 1 and i == len(ts) - 1)]
        overhang = rng.uniform(0.3, 1.2) * post_width(self.h0) / self.length_px
        pieces = [(ts[0] - overhang, ts[-1] + overhang)]
        if len(ts) > 2 and rng.random() < 0.15:  # modular rails: a joint at one post
            k = int(rng.integers(1, len(ts) - 1))
            gap = 0.35 * post_width(self.height(ts[k])) / self.length_px
            pieces = [(pieces[0][0], ts[k] - gap), (ts[k] + gap, pieces[0][1])]

        def thickness(frac: float, minimum: float) -> Offset:
            return lambda t: max(minimum * s, frac * self.height(t))

        specs = []
        if rng.random() < 0.72:
            lift = rng.uniform(0.0, 0.03)
            specs.append((TOEBOARD, lambda t: lift * self.height(t),
                          thickness(rng.uniform(0.15, 0.22), _TOE_MIN_PX), style["toe"]))
        if rng.random() < 0.93:
            mid_thick = thickness(rng.uniform(0.065, 0.09), _RAIL_MIN_PX)
            centre = rng.uniform(0.47, 0.58)
            specs.append((RAIL_MID, lambda t: centre * self.height(t) - mid_thick(t) / 2, mid_thick,
                          style["mid"]))
        top_thick = thickness(rng.uniform(0.075, 0.1), _RAIL_MIN_PX)
        specs.append((RAIL_TOP, lambda t: self.height(t) - top_thick(t), top_thick, style["top"]))
        for class_id, lower, thick, paint in specs:
            parts.extend((class_id, *self.rail(ta, tb, lower, thick, paint)) for ta, tb in pieces)
        return parts


def render_scene(rng: np.random.Generator, height: int, width: int) -> SyntheticScene:
    """Render one guardrail scene of ``height`` x ``width`` pixels from ``rng`` (fully determined by it).

    Works at any size: geometry is relative to the frame and pixel minimums scale with
    ``sqrt(height * width / (240 * 320))``, so a 1080x1920 frame looks like an upscaled 240x320 one.
    """
    if height < 16 or width < 16:
        raise ValueError(f"image too small to hold a guardrail: {height}x{width}")
    scale = math.sqrt(height * width / _REF_AREA)
    roll = math.radians(float(np.clip(rng.normal(0, 3.5), -9, 9)))
    horizon_y = rng.uniform(-0.1, 0.55) * height
    light = float(rng.uniform(-1, 1))
    centre = np.array([width / 2, height / 2])
    rotation = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])

    def rotate(point: np.ndarray) -> np.ndarray:
        return centre + rotation @ (np.asarray(point, np.float64) - centre)

    horizon = np.array([rotate((0.0, horizon_y)), rotate((float(width), horizon_y))])
    canvas = paint_background(rng, height, width, horizon, scale)
    scatter_distractors(rng, canvas, horizon_y, scale)
    grain = noise_field(rng, height, width, 30)

    labels = np.zeros((height, width), np.int32)
    owners: list[tuple[int, int]] = []  # (class id, run) per label value - 1
    runs = _layout_runs(rng, height, width, horizon_y, scale)
    order = sorted(range(len(runs)), key=lambda i: runs[i].h0 + runs[i].h1)  # far to near
    for run_index in order:
        painter = _RunPainter(rng, runs[run_index], rotate, scale, light)
        painter.slab(canvas, labels, grain)
        for class_id, poly, texture in painter.parts():
            owners.append((class_id, run_index))
            fill_polygon(canvas, poly, texture, labels=labels, label_value=len(owners))
    add_occluders(rng, canvas, labels, scale)
    image = finish_image(rng, canvas, scale)

    counts = np.bincount(labels.ravel(), minlength=len(owners) + 1)
    min_area = max(8.0, _MIN_AREA_PX * scale * scale)
    instances = [SceneInstance(CLASS_NAMES[class_id], class_id, labels == value, run)
                 for value, (class_id, run) in enumerate(owners, start=1) if counts[value] >= min_area]
    return SyntheticScene(image, instances)
