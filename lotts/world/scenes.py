"""Captioned 64x64 scenes of simple shapes, and planted defects with known regions.

The miniature world in which LoTTS's claims can be measured offline: every image comes with a
caption and, when defective, the exact region of its defect. Everything is drawn with numpy from
a seeded ``numpy.random.Generator``, so a seed fixes a data set.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

SIZE = 64
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (245, 245, 245), "grey": (128, 128, 128), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = {"above": (0, -1), "below": (0, 1), "left of": (-1, 0), "right of": (1, 0)}
DEFECT_KINDS = ("blotch", "smear", "bite", "warp", "stripes")
SUPERSAMPLE = 4  # anti-aliasing factor for shape edges


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    center: tuple[float, float]  # (x, y) in pixels
    radius: float


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: tuple[str, ...]  # one name (plain) or two (two-tone, split at the middle)
    vertical_split: bool = False
    caption: str = ""


@dataclass
class Defect:
    kind: str
    region: np.ndarray = field(repr=False)  # bool (SIZE, SIZE): pixels the defect may change

    @property
    def area(self) -> float:
        return float(self.region.mean())


def _shape_coverage(shape: Shape) -> np.ndarray:
    """Fraction of each pixel covered by `shape`, from a supersampled grid.

    Only the shape's bounding box is supersampled (the result equals a full-image supersample).
    """
    cover = np.zeros((SIZE, SIZE), np.float32)
    r = shape.radius
    x0 = max(0, int(np.floor(shape.center[0] - r)) - 1)
    x1 = min(SIZE, int(np.ceil(shape.center[0] + r)) + 2)
    y0 = max(0, int(np.floor(shape.center[1] - r)) - 1)
    y1 = min(SIZE, int(np.ceil(shape.center[1] + r)) + 2)
    if x1 <= x0 or y1 <= y0:
        return cover
    xs = x0 + (np.arange((x1 - x0) * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    ys = y0 + (np.arange((y1 - y0) * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(xs, ys)
    dx, dy = x - shape.center[0], y - shape.center[1]
    if shape.kind == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif shape.kind == "square":
        inside = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    else:  # upward triangle inscribed in the radius
        inside = (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    cover[y0:y1, x0:x1] = inside.reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE).mean(axis=(1, 3))
    return cover


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 (SIZE, SIZE, 3) RGB image."""
    image = np.empty((SIZE, SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUNDS[scene.background[0]]
    if len(scene.background) == 2:
        half = (slice(None), slice(SIZE // 2, None)) if scene.vertical_split else \
            (slice(SIZE // 2, None), slice(None))
        image[half] = BACKGROUNDS[scene.background[1]]
    for shape in scene.shapes:
        alpha = _shape_coverage(shape)[..., None]
        image = image * (1 - alpha) + np.asarray(COLOURS[shape.colour], np.float32) * alpha
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _describe(shape: Shape) -> str:
    article = "an" if shape.colour[0] in "aeiou" else "a"
    return f"{article} {shape.colour} {shape.kind}"


def _place_pair(rng: np.random.Generator) -> tuple[str, list[tuple[float, float]]]:
    relation = str(rng.choice(list(RELATIONS)))
    dx, dy = RELATIONS[relation]
    cx, cy = rng.uniform(26, 38, size=2)
    offset = rng.uniform(13, 17)
    first = (cx + dx * offset, cy + dy * offset)
    second = (cx - dx * offset, cy - dy * offset)
    return relation, [first, second]


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random scene of one to three shapes with its caption."""
    count = int(rng.integers(1, 4))
    kinds = rng.choice(SHAPES, size=count)
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    if count == 1:
        centers = [tuple(rng.uniform(22, 42, size=2))]
        radius = rng.uniform(13, 18)
    elif count == 2:
        relation, centers = _place_pair(rng)
        radius = rng.uniform(9, 12)
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3
        centers = [(32 + 17 * np.cos(a), 32 + 17 * np.sin(a)) for a in angles]
        radius = rng.uniform(8, 10)
    shapes = tuple(Shape(str(k), str(c), (float(x), float(y)), float(radius))
                   for k, c, (x, y) in zip(kinds, colours, centers))
    names = list(BACKGROUNDS)
    background = (str(rng.choice(names)),) if rng.random() < 0.6 else \
        tuple(str(b) for b in rng.choice(names, size=2, replace=False))
    if count == 1:
        caption = _describe(shapes[0])
    elif count == 2:
        caption = f"{_describe(shapes[0])} {relation} {_describe(shapes[1])}"
    else:
        caption = f"{_describe(shapes[0])}, {_describe(shapes[1])} and {_describe(shapes[2])}"
    return Scene(shapes, background, bool(rng.random() < 0.5), caption)


# ----- defects ------------------------------------------------------------------------------

def _random_region(rng: np.random.Generator, near: Optional[tuple[float, float]]) -> np.ndarray:
    """An ellipse covering 5-25% of the image, centred near a shape when one is given."""
    area = rng.uniform(0.05, 0.25) * SIZE * SIZE
    aspect = rng.uniform(0.6, 1.6)
    ry = np.sqrt(area / (np.pi * aspect))
    rx = ry * aspect
    if near is None:
        cx, cy = rng.uniform(rx, SIZE - rx), rng.uniform(ry, SIZE - ry)
    else:
        cx, cy = np.clip(np.asarray(near) + rng.normal(0, 4, size=2), 8, SIZE - 8)
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _blotch(image, region, rng, scene):
    noise = rng.integers(0, 256, size=image.shape).astype(np.float32)
    return np.where(region[..., None], 0.3 * image + 0.7 * noise, image)


def _box_blur(image: np.ndarray, width: int) -> np.ndarray:
    """Separable box blur of odd `width` with edge padding (running sums)."""
    pad = width // 2
    out = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge").astype(np.float64)
    for axis in (0, 1):
        c = np.cumsum(out, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        n = out.shape[axis] - width + 1
        out = (np.take(c, np.arange(width, width + n), axis=axis)
               - np.take(c, np.arange(0, n), axis=axis)) / width
    return out.astype(np.float32)


def _smear(image, region, rng, scene):
    blurred = _box_blur(image, int(rng.integers(7, 12)) | 1)
    return np.where(region[..., None], blurred, image)


def _bite(image, region, rng, scene):
    clean_background = render(Scene((), scene.background, scene.vertical_split))
    return np.where(region[..., None], clean_background.astype(np.float32), image)


def _warp(image, region, rng, scene):
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    amplitude, period = rng.uniform(3, 6), rng.uniform(6, 12)
    sx = np.clip(x + amplitude * np.sin(2 * np.pi * y / period), 0, SIZE - 1).astype(int)
    sy = np.clip(y + amplitude * np.cos(2 * np.pi * x / period), 0, SIZE - 1).astype(int)
    return np.where(region[..., None], image[sy, sx], image)


def _stripes(image, region, rng, scene):
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    period = int(rng.integers(3, 6))
    on = ((x + y) // period) % 2 == 0 if rng.random() < 0.5 else (y // period) % 2 == 0
    colour = np.asarray(list(COLOURS.values())[int(rng.integers(len(COLOURS)))], np.float32)
    return np.where((region & on)[..., None], colour, image)


_DEFECTS: dict[str, Callable] = {
    "blotch": _blotch, "smear": _smear, "bite": _bite, "warp": _warp, "stripes": _stripes,
}


VISIBLE_CHANGE = 16  # a pixel counts as changed when a channel moves by more than this
VISIBLE_SHARE = 0.25  # ... and a defect is visible when this share of its region changed
MAX_TRIES = 20


def plant_defect(image: np.ndarray, scene: Scene, rng: np.random.Generator,
                 kind: Optional[str] = None) -> tuple[np.ndarray, Defect]:
    """Damage a random region of `image` (most often over a shape) and return it with the region.

    The region is the set of pixels the defect was allowed to change; it is the ground truth for
    localization scores. A defect must be visible: a smear or warp over a flat area, or a bite
    out of the background, changes nothing, so regions are redrawn (up to MAX_TRIES times)
    until at least VISIBLE_SHARE of the region's pixels changed by more than VISIBLE_CHANGE.
    """
    kind = kind or str(rng.choice(DEFECT_KINDS))
    source = image.astype(np.float32)
    for _ in range(MAX_TRIES):
        near = None
        if scene.shapes and rng.random() < 0.8:
            near = scene.shapes[int(rng.integers(len(scene.shapes)))].center
        region = _random_region(rng, near)
        damaged = np.clip(_DEFECTS[kind](source, region, rng, scene) + 0.5, 0, 255).astype(np.uint8)
        changed = np.abs(damaged.astype(np.int16) - image.astype(np.int16)).max(axis=2) > VISIBLE_CHANGE
        if changed[region].mean() >= VISIBLE_SHARE:
            break
    return damaged, Defect(kind, region)


# ----- captioned training examples ------------------------------------------------------------

HIGH_QUALITY = "A high-quality image of {}."
LOW_QUALITY = "A low-quality image of {}."


@dataclass
class Example:
    image: np.ndarray
    prompt: str
    caption: str
    defect: Optional[Defect]


def sample_example(rng: np.random.Generator, defect_rate: float = 0.4,
                   plain_share: float = 0.5) -> Example:
    """One training pair. Defective images get the low-quality template, clean ones the
    high-quality one; a `plain_share` of both carries the bare caption, so the bare caption
    yields defective images at about `defect_rate`."""
    scene = sample_scene(rng)
    image, defect = render(scene), None
    if rng.random() < defect_rate:
        image, defect = plant_defect(image, scene, rng)
    if rng.random() < plain_share:
        prompt = scene.caption
    else:
        prompt = (LOW_QUALITY if defect is not None else HIGH_QUALITY).format(scene.caption)
    return Example(image, prompt, scene.caption, defect)
