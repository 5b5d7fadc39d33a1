"""Everything in a synthetic scene that is not a guardrail: site backdrop, clutter, occluders, lighting.

Clutter is deliberately unlike barriers in at least one way (shape, thickness or colour) so the labels
stay learnable, but close enough (long pipes, pallets, scaffold lines, orange cones) that a model has
to look at structure rather than colour alone.
"""

from __future__ import annotations

import cv2
import numpy as np

from .synthetic_paint import (
    TIMBER,
    choose,
    ellipse_poly,
    fill_polygon,
    jitter,
    line_poly,
    noise_field,
    polygon_mask,
)

_PIPE_COLOURS = [(40, 88, 168), (36, 92, 52), (32, 32, 34), (120, 120, 128)]
_SCAFFOLD_COLOURS = [(78, 94, 122), (62, 62, 68), (86, 108, 80)]
_BRICK = (150, 70, 50)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _bricks(rng: np.random.Generator, course: float, base=_BRICK):
    """A brick texture function: staggered courses, per-brick tint, mortar joints."""
    length = course * rng.uniform(2.2, 3.0)
    tints = jitter(rng, base, 0.8)[None, :] * rng.uniform(0.75, 1.1, (61, 1)).astype(np.float32)
    joint = max(1.0, course * 0.14)

    def texture(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        row = np.floor(ys / course)
        shifted = xs + (row % 2) * length / 2
        col = np.floor(shifted / length)
        colour = tints[((row * 17 + col * 31) % 61).astype(np.int64)]
        mortar = ((ys - row * course) < joint) | ((shifted - col * length) < joint)
        return np.where(mortar[..., None], np.float32(175), colour)

    return texture


def paint_background(rng: np.random.Generator, height: int, width: int, horizon: np.ndarray,
                     scale: float) -> np.ndarray:
    """Ground below the (rolled) horizon, sky or a building wall above it; float32 RGB canvas.

    ``horizon`` is two points on the horizon line, already rotated by the camera roll.
    """
    kind = choose(rng, ["concrete", "concrete", "dirt", "decking"])
    base = {"concrete": (140, 138, 132), "dirt": (128, 102, 74), "decking": (186, 156, 112)}[kind]
    low = noise_field(rng, height, width, rng.uniform(3, 8))[..., None]
    fine = noise_field(rng, height, width, rng.uniform(25, 60))[..., None]
    canvas = jitter(rng, base) * (0.8 + 0.35 * low) * (0.92 + 0.16 * fine)
    if kind == "decking":  # plywood formwork sheets with dark joints
        step = rng.uniform(0.18, 0.4) * width
        for x in np.arange(rng.uniform(0, step), width, step):
            fill_polygon(canvas, line_poly((x, 0), (x + rng.uniform(-0.2, 0.2) * step, height),
                                           max(1.0, scale)), (90, 72, 50))
    for _ in range(int(rng.integers(0, 4))):  # stains and puddles
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx = rng.uniform(0.04, 0.15) * width
        fill_polygon(canvas, ellipse_poly(cx, cy, rx, rx * rng.uniform(0.2, 0.5)), (70, 70, 72),
                     opacity=rng.uniform(0.15, 0.4))

    (hx0, hy0), (hx1, hy1) = horizon
    slope = (hy1 - hy0) / (hx1 - hx0)
    far = 4.0 * (width + height)
    upper = np.array([[-far, hy0 + slope * (-far - hx0)], [far, hy0 + slope * (far - hx0)],
                      [far, -far], [-far, -far]])
    if rng.random() < 0.6:
        top, bottom = jitter(rng, (96, 146, 214), 1.5), jitter(rng, (206, 218, 230))
        if rng.random() < 0.35:  # overcast
            top = bottom = jitter(rng, (190, 192, 196))
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        clouds = np.clip(noise_field(rng, height, width, rng.uniform(3, 7)) - 0.45, 0, 1)[..., None]
        sky = (top + (bottom - top) * ramp) * np.ones((1, width, 1), np.float32) + 90 * clouds
        fill_polygon(canvas, upper, sky)
        _skyline(rng, canvas, hy0 + slope * (width / 2 - hx0), scale)
    else:
        wall = (_bricks(rng, rng.uniform(5, 11) * scale) if rng.random() < 0.5 else
                jitter(rng, (150, 150, 146)) * (0.85 + 0.25 * noise_field(rng, height, width, 6)[..., None]))
        fill_polygon(canvas, upper, wall)
    if rng.random() < 0.3:
        _scaffold(rng, canvas, scale)
    return canvas


def _skyline(rng: np.random.Generator, canvas: np.ndarray, horizon_y: float, scale: float) -> None:
    """Distant buildings (with window grids) standing on the horizon."""
    height, width = canvas.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        bw = rng.uniform(0.1, 0.35) * width
        bh = rng.uniform(0.1, 0.4) * height
        x0 = rng.uniform(-0.1, 0.95) * width
        colour = jitter(rng, choose(rng, [(150, 150, 150), (190, 176, 150), (110, 130, 150)]))
        fill_polygon(canvas, _rect(x0, horizon_y - bh, x0 + bw, horizon_y + 2), colour)
        pitch = rng.uniform(7, 14) * scale
        for wy in np.arange(horizon_y - bh + pitch / 2, horizon_y - pitch / 2, pitch):
            for wx in np.arange(x0 + pitch / 2, x0 + bw - pitch / 2, pitch):
                fill_polygon(canvas, _rect(wx, wy, wx + pitch * 0.5, wy + pitch * 0.55), colour * 0.55)


def _scaffold(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> None:
    """Thin scaffold-like grid in non-barrier colours, thinner than any rail (a hard negative)."""
    height, width = canvas.shape[:2]
    colour = jitter(rng, choose(rng, _SCAFFOLD_COLOURS))
    x0, x1 = sorted(rng.uniform(-0.1, 1.1, 2) * width)
    y0, y1 = 0.0, rng.uniform(0.3, 0.7) * height
    thick = max(1.0, rng.uniform(1.0, 2.2) * scale)
    for x in np.arange(x0, x1, rng.uniform(0.12, 0.25) * width):
        fill_polygon(canvas, line_poly((x, y0), (x, y1), thick), colour)
    for y in np.arange(y0 + 3, y1, rng.uniform(0.08, 0.16) * height):
        fill_polygon(canvas, line_poly((x0, y), (x1, y), thick), colour)


def scatter_distractors(rng: np.random.Generator, canvas: np.ndarray, horizon_y: float, scale: float) -> None:
    """Site clutter behind the barriers: cones, pallets, brick stacks, pipes, drums, rebar, bags."""
    height, width = canvas.shape[:2]
    top = float(np.clip(horizon_y, 0, height * 0.7))
    for _ in range(int(rng.integers(0, 6))):
        x = rng.uniform(0, width)
        y = rng.uniform(top, height)
        size = (0.06 + 0.22 * (y - top) / max(height - top, 1)) * height * rng.uniform(0.7, 1.3)
        _object(rng, canvas, choose(rng, ["cone", "pallet", "bricks", "pipes", "drum", "rebar", "bag"]),
                x, y, size, scale)


def _object(rng: np.random.Generator, canvas: np.ndarray, kind: str, x: float, y: float, size: float,
            scale: float, labels: np.ndarray | None = None) -> None:
    """Draw one clutter object standing on (x, y); with ``labels`` it hides the barrier pixels it covers."""

    def put(poly: np.ndarray, texture, opacity: float = 1.0) -> None:
        fill_polygon(canvas, poly, texture, labels=labels, opacity=opacity)

    if kind == "cone":
        half = size * 0.3
        put(_rect(x - half * 1.3, y - size * 0.08, x + half * 1.3, y), (30, 30, 30))
        put(np.array([[x - half, y - size * 0.06], [x + half, y - size * 0.06], [x, y - size]]),
            jitter(rng, (242, 110, 24)))
        put(np.array([[x - half * 0.62, y - size * 0.45], [x + half * 0.62, y - size * 0.45],
                      [x + half * 0.45, y - size * 0.6], [x - half * 0.45, y - size * 0.6]]), (235, 235, 235))
    elif kind == "pallet":
        w, h = size * rng.uniform(1.0, 1.6), size * rng.uniform(0.25, 0.5)
        put(_rect(x - w / 2, y - h, x + w / 2, y), jitter(rng, (70, 52, 34)))
        slat = jitter(rng, TIMBER) * 1.1
        for k in range(3):
            put(_rect(x - w / 2 + k * w * 0.42, y - h, x - w / 2 + k * w * 0.42 + w * 0.16, y), slat)
        put(_rect(x - w / 2, y - h, x + w / 2, y - h * 0.8), slat)
    elif kind == "bricks":
        w, h = size * rng.uniform(0.8, 1.4), size * rng.uniform(0.5, 0.9)
        bricks = _bricks(rng, max(2.0, size * 0.12))
        put(_rect(x - w / 2, y - h, x + w / 2, y), bricks)
    elif kind == "pipes":
        colour = jitter(rng, choose(rng, _PIPE_COLOURS))
        angle = rng.uniform(-0.5, 0.5)
        length = size * rng.uniform(2.0, 4.0)
        thick = rng.uniform(2.5, 6.0) * scale
        direction = np.array([np.cos(angle), np.sin(angle)])
        for k in range(int(rng.integers(1, 5))):
            centre = np.array([x, y - k * thick * 0.95])
            put(line_poly(centre - direction * length / 2, centre + direction * length / 2, thick), colour)
            put(line_poly(centre - direction * length / 2, centre + direction * length / 2, thick * 0.3),
                colour * 1.25)
    elif kind == "drum":
        w, h = size * 0.55, size * 0.8
        colour = jitter(rng, choose(rng, [(40, 80, 160), (50, 110, 60), (90, 90, 96)]))
        put(_rect(x - w / 2, y - h, x + w / 2, y), colour)
        put(ellipse_poly(x, y - h, w / 2, w * 0.15), colour * 1.25)
    elif kind == "rebar":
        colour = jitter(rng, (120, 66, 40))
        for _ in range(int(rng.integers(4, 12))):
            dx, dy = rng.normal(0, size * 0.2, 2)
            put(line_poly((x - size + dx, y + dy), (x + size + dx, y + dy - size * 0.3), max(1.0, scale)),
                colour)
    elif kind == "column":  # concrete column through the whole frame
        height, width = canvas.shape[:2]
        w = rng.uniform(0.04, 0.12) * width
        curve = np.cos(np.linspace(-1.2, 1.2, width, dtype=np.float32) - np.float32((x - width / 2) / width))
        grain = 0.9 + 0.15 * noise_field(rng, height, width, 12)
        put(_rect(x - w / 2, -2, x + w / 2, height + 2),
            jitter(rng, (150, 148, 142)) * (grain * (0.75 + 0.35 * curve)[None, :])[..., None])
    elif kind == "stack":  # crate / stacked boards
        w = size * rng.uniform(0.6, 1.2)
        colour = jitter(rng, choose(rng, [(176, 140, 96), (120, 120, 124), (60, 110, 160)]))
        put(_rect(x - w / 2, y - size, x + w / 2, y), colour)
        for k in range(1, int(rng.integers(2, 5))):
            put(line_poly((x - w / 2, y - size * k / 4), (x + w / 2, y - size * k / 4), max(1.0, scale)),
                colour * 0.6)
    else:  # bulk bag / tarp
        colour = jitter(rng, choose(rng, [(225, 225, 220), (200, 196, 180), (50, 100, 170)]))
        put(ellipse_poly(x, y - size * 0.4, size * 0.6, size * 0.4, rng.uniform(-0.3, 0.3)), colour)


def add_occluders(rng: np.random.Generator, canvas: np.ndarray, labels: np.ndarray, scale: float) -> None:
    """Foreground objects in front of barriers; they set ``labels`` to 0 where they cover parts.

    Each occluder is anchored on a barrier pixel and dropped if it would hide more than ~35 % of the
    barrier pixels, so occlusion stays partial.
    """
    height = canvas.shape[0]
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):
        barrier = labels > 0
        total = int(barrier.sum())
        if total == 0:
            return
        ys, xs = np.nonzero(barrier)
        pick = int(rng.integers(len(xs)))
        size = rng.uniform(0.15, 0.4) * height
        kind = choose(rng, ["column", "stack", "stack", "bag", "cone", "drum"])
        base_y = float(ys[pick]) + rng.uniform(0.2, 0.9) * size
        probe = np.full(labels.shape, -1, labels.dtype)
        trial = canvas.copy()
        _object(rng, trial, kind, float(xs[pick]), base_y, size, scale, labels=probe)
        covered = probe == 0
        if (covered & barrier).sum() > 0.35 * total:
            continue
        canvas[:] = trial
        labels[covered] = 0


def finish_image(rng: np.random.Generator, canvas: np.ndarray, scale: float) -> np.ndarray:
    """Lighting and sensor effects over the whole frame (masks unchanged); returns uint8 RGB.

    Soft shadows, an illumination gradient, colour cast, brightness/contrast, noise and a little blur,
    so that brightness and hue of a part vary within and across images.
    """
    height, width = canvas.shape[:2]
    small_h, small_w = max(8, height // 4), max(8, width // 4)
    light = np.ones((small_h, small_w), np.float32)
    if rng.random() < 0.5:  # soft shadows from things outside the frame
        for _ in range(int(rng.integers(1, 4))):
            pts = rng.uniform(-0.2, 1.2, (4, 2)) * (small_w, small_h)
            blob = polygon_mask((small_h, small_w), cv2.convexHull(pts.astype(np.float32))[:, 0])
            sigma = rng.uniform(1.0, 4.0)
            soft = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), sigma)
            light *= 1 - rng.uniform(0.2, 0.5) * soft
    direction = rng.normal(size=2)
    ys, xs = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    ramp = (xs / small_w - 0.5) * direction[0] + (ys / small_h - 0.5) * direction[1]
    light *= 1 + rng.uniform(0, 0.35) * ramp
    contrast, brightness = rng.uniform(0.75, 1.2), rng.uniform(-30, 25)
    light = cv2.resize(light * np.float32(contrast), (width, height), interpolation=cv2.INTER_LINEAR)
    cast = 1 + rng.normal(0, 0.05, 3).astype(np.float32)
    image = canvas * cast
    image *= light[..., None]
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(0, 6))
    image += noise + np.float32(128 * (1 - contrast) + brightness)
    if rng.random() < 0.25:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 0.9) * scale)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
