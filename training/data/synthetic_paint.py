"""Painting primitives for the synthetic guardrail scenes: polygon compositing, noise and barrier paints.

Kept apart from the scene geometry (:mod:`barrier_annotator.training.data.synthetic_scene`) and the backdrop
(:mod:`barrier_annotator.training.data.synthetic_backdrop`) because both draw through :func:`fill_polygon`: one place
decides how anti-aliased image edges relate to the exact, aliased rasterisation used for the masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

#: A texture maps pixel-centre coordinates (float32 arrays, same shape) to RGB float32 colours (..., 3).
TextureFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
Colour = tuple[float, float, float]

_SHIFT = 4  # sub-pixel bits for cv2.fillPoly, so thin parts keep their exact float geometry
_ONE = 1 << _SHIFT

YELLOW: Colour = (236, 196, 28)
BLACK: Colour = (28, 28, 30)
RED: Colour = (200, 34, 30)
WHITE: Colour = (236, 236, 230)
GALVANISED: Colour = (168, 172, 175)
TIMBER: Colour = (170, 118, 64)
ORANGE: Colour = (242, 118, 22)


def fill_polygon(
    canvas: np.ndarray,
    poly: np.ndarray,
    texture: TextureFn | np.ndarray | Colour,
    *,
    labels: np.ndarray | None = None,
    label_value: int = 0,
    opacity: float = 1.0,
) -> None:
    """Composite a textured polygon onto ``canvas`` (float32 HxWx3, RGB 0..255) with anti-aliased edges.

    When ``labels`` is given, the polygon's exact aliased rasterisation (pixel centres inside) is
    stamped into it with ``label_value``: the image gets soft edges, the masks stay pixel-precise and
    reproducible. ``texture`` is a function of pixel coordinates, a full-canvas array, or one colour.
    """
    height, width = canvas.shape[:2]
    x0 = max(int(np.floor(poly[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(poly[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(poly[:, 0].max())) + 2, width)
    y1 = min(int(np.ceil(poly[:, 1].max())) + 2, height)
    if x1 <= x0 or y1 <= y0:
        return
    pts = np.round((poly - (x0, y0)) * _ONE).astype(np.int32)
    alpha = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(alpha, [pts], 255, cv2.LINE_AA, _SHIFT)
    if not alpha.any():
        return
    if callable(texture):
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        colour = texture(xs, ys)
    else:
        texture = np.asarray(texture, np.float32)
        colour = texture[y0:y1, x0:x1] if texture.ndim == 3 else texture
    weight = alpha.astype(np.float32)[..., None] * np.float32(opacity / 255.0)
    region = canvas[y0:y1, x0:x1]
    region += (colour - region) * weight
    if labels is not None:
        hard = np.zeros_like(alpha)
        cv2.fillPoly(hard, [pts], 1, cv2.LINE_8, _SHIFT)
        labels[y0:y1, x0:x1][hard.astype(bool)] = label_value


def polygon_mask(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    """The exact rasterisation :func:`fill_polygon` would stamp into ``labels`` (bool HxW)."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(poly * _ONE).astype(np.int32)], 1, cv2.LINE_8, _SHIFT)
    return mask.astype(bool)


def line_poly(p0: np.ndarray, p1: np.ndarray, width: float) -> np.ndarray:
    """A straight stroke as a quad, so lines share the polygon path (float32 canvas, exact width)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    direction = p1 - p0
    normal = np.array([-direction[1], direction[0]]) / max(float(np.hypot(*direction)), 1e-6)
    half = normal * (width / 2)
    return np.array([p0 + half, p1 + half, p1 - half, p0 - half])


def ellipse_poly(cx: float, cy: float, rx: float, ry: float, angle: float = 0.0, n: int = 28) -> np.ndarray:
    """An ellipse as a float polygon (``cv2.ellipse2Poly`` rounds to integers)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ca, sa = np.cos(angle), np.sin(angle)
    ex, ey = rx * np.cos(theta), ry * np.sin(theta)
    return np.stack([cx + ca * ex - sa * ey, cy + sa * ex + ca * ey], axis=1)


def noise_field(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Smooth value noise in about [0, 1] with ``cells`` blobs along the long side (cheap upsampling)."""
    long_side = max(height, width)
    gy = max(2, round(cells * height / long_side) + 1)
    gx = max(2, round(cells * width / long_side) + 1)
    coarse = rng.random((gy, gx), dtype=np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def choose(rng: np.random.Generator, options: list):
    """One element of ``options`` (``rng.choice`` would turn tuples into array rows)."""
    return options[int(rng.integers(len(options)))]


def jitter(rng: np.random.Generator, colour: Colour, amount: float = 1.0) -> np.ndarray:
    """A colour varied in brightness and hue a little, so no two barriers share exact RGB values."""
    gain = rng.uniform(1 - 0.14 * amount, 1 + 0.08 * amount)
    return np.clip(np.asarray(colour) * gain + rng.normal(0, 7 * amount, 3), 0, 255).astype(np.float32)


@dataclass(frozen=True)
class Paint:
    """How one barrier part looks: material (``flat``/``tube``/``wood``) and an optional two-colour pattern.

    Patterns are laid out in metres along the part so stripes shrink with perspective like real ones.
    """

    material: str
    colour: np.ndarray
    pattern: str = "plain"  # "plain", "diagonal" (hazard stripes) or "bands" (red/white segments)
    colour2: np.ndarray | None = None
    period_m: float = 0.3
    phase: float = 0.0

    def shade(self, along_m: np.ndarray, across: np.ndarray, across_m: np.ndarray,
              light: float) -> np.ndarray:
        """Colours for part coordinates: metres along the part, ``across`` in [-1, 1] (+1 = lit side)."""
        along_m = along_m + self.phase
        if self.pattern == "plain" or self.colour2 is None:
            colour = np.broadcast_to(self.colour, (*along_m.shape, 3))
        else:
            coord = along_m + across_m if self.pattern == "diagonal" else along_m
            odd = (np.floor(coord / self.period_m).astype(np.int64) & 1).astype(bool)
            colour = np.where(odd[..., None], self.colour2, self.colour)
        side = np.clip(across * light, -1, 1)
        if self.material == "tube":
            body = np.sqrt(np.clip(1 - across * across, 0, 1))
            gain = 0.5 + 0.45 * body + 0.12 * side
            spec = 70 * np.exp(-(((across - 0.45 * light) / 0.22) ** 2))
            return colour * gain[..., None] + spec[..., None]
        if self.material == "wood":
            grain = np.sin(across * 7.0 + 1.8 * np.sin(along_m * 2.3 + self.phase) + self.phase)
            gain = 0.86 + 0.07 * grain + 0.05 * np.sin(along_m * 29.0) + 0.06 * side
            return colour * gain[..., None]
        edge = np.where(np.abs(across) > 0.78, 0.82, 1.0)
        gain = (0.9 + 0.1 * side) * edge * (0.97 + 0.03 * np.sin(along_m * 11.0 + self.phase))
        return colour * gain[..., None]


def pick_style(rng: np.random.Generator) -> dict[str, Paint]:
    """Paints for one guardrail run: keys ``top``, ``mid``, ``toe``, ``post``.

    Styles follow what sites use (hazard yellow/black, red/white, scaffold tube with boards, timber,
    orange) with the odd mixed combination, so colour alone never identifies a class.
    """
    style = rng.choice(["hazard", "redwhite", "scaffold", "timber", "orange", "mixed"],
                       p=[0.22, 0.18, 0.22, 0.15, 0.13, 0.10])
    phase = float(rng.uniform(0, 10))

    def paint(material: str, colour: Colour, pattern: str = "plain", colour2: Colour | None = None,
              period: float = 0.3) -> Paint:
        second = None if colour2 is None else jitter(rng, colour2, 0.6)
        return Paint(material, jitter(rng, colour), pattern, second, period * rng.uniform(0.8, 1.25), phase)

    wood = paint("wood", TIMBER)
    if style == "hazard":
        rail = paint("flat", YELLOW, "diagonal", BLACK, 0.22) if rng.random() < 0.7 else paint("flat", YELLOW)
        post = paint("flat", choose(rng, [YELLOW, BLACK, GALVANISED]))
        toe = paint("flat", YELLOW, "diagonal", BLACK, 0.18) if rng.random() < 0.6 else wood
    elif style == "redwhite":
        rail = paint(choose(rng, ["flat", "tube"]), RED, "bands", WHITE, 0.5)
        post = paint("flat", WHITE, "bands", RED, 0.25) if rng.random() < 0.5 else paint("flat", RED)
        toe = paint("flat", RED, "bands", WHITE, 0.5) if rng.random() < 0.5 else wood
    elif style == "scaffold":
        rail = paint("tube", GALVANISED)
        post = paint("tube", GALVANISED)
        toe = wood if rng.random() < 0.75 else paint("flat", GALVANISED)
    elif style == "timber":
        rail, post, toe = wood, paint("wood", TIMBER), paint("wood", TIMBER)
    elif style == "orange":
        rail = paint(choose(rng, ["flat", "tube"]), ORANGE)
        post = paint("flat", ORANGE) if rng.random() < 0.6 else paint("tube", GALVANISED)
        toe = paint("flat", ORANGE) if rng.random() < 0.5 else wood
    else:
        rail = paint(choose(rng, ["flat", "tube"]), choose(rng, [YELLOW, ORANGE, RED, GALVANISED]))
        post = paint("flat", choose(rng, [GALVANISED, BLACK, YELLOW]))
        toe = wood if rng.random() < 0.5 else paint("flat", YELLOW, "diagonal", BLACK, 0.18)
    return {"top": rail, "mid": rail, "toe": toe, "post": post}
