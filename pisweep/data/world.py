"""A tiny procedural image world: coloured shapes on textured backgrounds, rendered with PIL + numpy.

Everything here is a pure function of its arguments (seeds included), so the synthetic data sets are
reproducible bit for bit and tests can re-derive the scene behind any image from its seed and index.

Why this design: the study asks whether a vision tower that first learns *human similarity judgments*
(NIGHTS) later does better on zero-shot tasks. For the synthetic stand-in to show such an effect, the
simulated humans must attend to what the zero-shot tasks ask about. So :func:`perceptual_distance` is
dominated by shape, then colour, then background texture, with small terms for pose, and the zero-shot
tasks classify shape and colour (texture only in one 2-class task).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross",
                           "ring", "diamond", "hexagon", "heart", "crescent")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (40, 80, 215),
    "yellow": (235, 205, 35), "purple": (135, 55, 175), "orange": (240, 135, 25),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "grid")

# Weights of the simulated human distance (see module docstring). Rater noise is on the difference of distances.
W_SHAPE, W_COLOUR, W_TEXTURE, W_POSE = 3.0, 2.0, 1.0, 0.6
#: What the simulated humans attend to, as (shape, colour, texture, pose) weights. "task-aligned" is the demo's
#: positive control: the zero-shot tasks classify shape and colour, so a vision tower that learns these judgments
#: is built to help. "pose-only" is the negative control: position, size and rotation, which no task asks about.
JUDGMENTS: dict[str, tuple[float, float, float, float]] = {
    "task-aligned": (W_SHAPE, W_COLOUR, W_TEXTURE, W_POSE),
    "pose-only": (0.0, 0.0, 0.0, W_SHAPE),
}
COLOUR_SCALE = 250.0  # RGB distance at which the colour term saturates
RATER_NOISE = 0.45  # std of one simulated rater's noise on d(ref, left) - d(ref, right)

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {obj} on a {tex} background",
    "a photo of a {obj} on a {tex} backdrop",
    "{obj}, {tex} background",
    "there is a {obj} in front of a {tex} background",
    "a picture of a {obj}",
    "a drawing of a {obj} over a {tex} pattern",
)
_SUPERSAMPLE = 2  # masks are drawn at 2x and reduced: cheap anti-aliasing


@dataclass(frozen=True)
class Obj:
    """One foreground shape. Position and size are fractions of the image side; rotation in degrees."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    size: float
    rotation: float


@dataclass(frozen=True)
class Scene:
    """Everything that determines an image (besides its pixel size)."""

    objects: tuple[Obj, ...]
    texture: str
    tone: tuple[int, int, int]  # background base colour (neutral)
    tone2: tuple[int, int, int]  # second tone of the texture pattern
    period: float  # texture period, fraction of the image side
    angle: float  # texture angle, radians
    noise_seed: int

    @property
    def main(self) -> Obj:
        return self.objects[0]


def rng_for(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent random stream per (seed, stream, index): item i never depends on how many came before."""
    return np.random.default_rng([seed, stream, index])


def sample_object(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                  slot: int = 0, of: int = 1) -> Obj:
    """A shape with random pose. With ``of`` > 1 objects, each keeps to its own horizontal band."""
    shape = shape if shape is not None else SHAPES[rng.integers(len(SHAPES))]
    names = list(COLOURS)
    colour = colour if colour is not None else names[rng.integers(len(names))]
    jitter = rng.integers(-18, 19, size=3)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
    if of == 1:
        cx, cy, size = rng.uniform(0.38, 0.62), rng.uniform(0.38, 0.62), rng.uniform(0.42, 0.62)
    else:
        lo, hi = slot / of, (slot + 1) / of
        cx, cy, size = rng.uniform(lo + 0.2 / of, hi - 0.2 / of), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.42)
    return Obj(shape, colour, rgb, float(cx), float(cy), float(size), float(rng.uniform(-20.0, 20.0)))


def sample_background(rng: np.random.Generator, texture: str | None = None) -> dict:
    """Neutral (grey/beige) tones, so that colour is the foreground's; texture params are jittered."""
    texture = texture if texture is not None else TEXTURES[rng.integers(len(TEXTURES))]
    base = int(rng.integers(120, 200))
    tint = rng.integers(-10, 11, size=3)
    tone = tuple(int(np.clip(base + t, 0, 255)) for t in tint)
    delta = int(rng.integers(45, 70)) * (1 if base < 160 else -1)
    tone2 = tuple(int(np.clip(c + delta, 0, 255)) for c in tone)
    return {"texture": texture, "tone": tone, "tone2": tone2, "period": float(rng.uniform(0.14, 0.22)),
            "angle": float(rng.uniform(0, math.pi)), "noise_seed": int(rng.integers(2**31))}


def sample_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 texture: str | None = None, n_objects: int = 1) -> Scene:
    """A random scene; any attribute of the first object and the texture may be fixed (for labelled sets)."""
    objs = [sample_object(rng, shape if i == 0 else None, colour if i == 0 else None, i, n_objects)
            for i in range(n_objects)]
    return Scene(objects=tuple(objs), **sample_background(rng, texture))


def perturb(rng: np.random.Generator, scene: Scene, change_shape: bool, change_colour: bool,
            change_texture: bool) -> Scene:
    """A "distortion" of a one-object scene: the chosen attributes change, pose and noise always jitter."""
    o = scene.main
    shape = _other(rng, SHAPES, o.shape) if change_shape else o.shape
    colour = _other(rng, tuple(COLOURS), o.colour) if change_colour else o.colour
    new = sample_object(rng, shape, colour)
    if not change_colour:
        new = replace(new, rgb=o.rgb)
    pose = rng.normal(0.0, [0.04, 0.04, 0.04, 8.0])
    new = replace(new, cx=float(np.clip(o.cx + pose[0], 0.3, 0.7)), cy=float(np.clip(o.cy + pose[1], 0.3, 0.7)),
                  size=float(np.clip(o.size + pose[2], 0.35, 0.68)), rotation=float(o.rotation + pose[3]))
    if change_texture:
        bg = sample_background(rng, _other(rng, TEXTURES, scene.texture))
    else:
        bg = {"texture": scene.texture, "tone": scene.tone, "tone2": scene.tone2, "period": scene.period,
              "angle": scene.angle, "noise_seed": int(rng.integers(2**31))}
    return Scene(objects=(new,), **bg)


def _other(rng: np.random.Generator, options: tuple[str, ...], current: str) -> str:
    rest = [x for x in options if x != current]
    return rest[rng.integers(len(rest))]


def perceptual_distance(a: Scene, b: Scene, judgments: str = "task-aligned") -> float:
    """The simulated human distance between two one-object scenes, weighted as ``JUDGMENTS[judgments]``
    (task-aligned: shape >> colour > texture > pose)."""
    w_shape, w_colour, w_texture, w_pose = JUDGMENTS[judgments]
    oa, ob = a.main, b.main
    d = w_shape * (oa.shape != ob.shape)
    d += w_colour * min(1.0, float(np.linalg.norm(np.subtract(oa.rgb, ob.rgb))) / COLOUR_SCALE)
    d += w_texture * (a.texture != b.texture)
    rot = abs((oa.rotation - ob.rotation + 180.0) % 360.0 - 180.0) / 180.0
    pose = abs(oa.cx - ob.cx) + abs(oa.cy - ob.cy) + abs(oa.size - ob.size) + 0.5 * rot
    return float(d + w_pose * min(1.0, pose / 0.3))


def nights_triplet(seed: int, index: int) -> tuple[Scene, Scene, Scene]:
    """Reference and two distortions for NIGHTS candidate ``index``; each distortion changes a random subset
    of (shape, colour, texture), so triplets trade attributes off against each other (that is what teaches
    their relative weight)."""
    rng = rng_for(seed, 2, index)
    ref = sample_scene(rng)
    flags = rng.random((2, 3)) < np.array([0.35, 0.5, 0.6])
    return ref, perturb(rng, ref, *map(bool, flags[0])), perturb(rng, ref, *map(bool, flags[1]))


def simulate_votes(seed: int, index: int, d_left: float, d_right: float) -> tuple[bool, int]:
    """Raters vote one after another (6 to 10 of them) until the first disagreement.

    Returns (right_closer, votes): the side the raters agreed on and how many agreed before the first
    dissent (or all of them). NIGHTS keeps only triplets with >= 6 unanimous votes.
    """
    rng = rng_for(seed, 3, index)
    n_raters = int(rng.integers(6, 11))
    picks = (d_left - d_right + rng.normal(0.0, RATER_NOISE, n_raters)) > 0  # True: right is closer
    agree = picks == picks[0]
    votes = n_raters if agree.all() else int(np.argmin(agree))
    return bool(picks[0]), votes


def obj_phrase(o: Obj) -> str:
    return f"{o.colour} {o.shape}"


def caption(scene: Scene, template: int) -> str:
    """Caption ``template`` (index into :data:`CAPTION_TEMPLATES`) of a scene."""
    obj = " and a ".join(obj_phrase(o) for o in scene.objects)
    text = CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(obj=obj, tex=scene.texture)
    return _fix_articles(text)


def _fix_articles(text: str) -> str:
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][:1] in "aeiou":
            words[i] = "an"
    return " ".join(words)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw a scene as an RGB image of ``size`` x ``size`` pixels (deterministic)."""
    img = _background(scene, size)
    for o in scene.objects:
        m = _mask(o, size)[..., None]
        img = img * (1.0 - m) + np.asarray(o.rgb, np.float32) * m
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, 6.0, img.shape)
    return Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8), "RGB")


def _background(scene: Scene, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    p, t = scene.period, scene.texture
    if t == "plain":
        pat = np.zeros((size, size), bool)
    elif t == "striped":
        pat = ((x * math.cos(scene.angle) + y * math.sin(scene.angle)) / p) % 1.0 < 0.5
    elif t == "dotted":
        pat = ((x % p - p / 2) ** 2 + (y % p - p / 2) ** 2) < (0.28 * p) ** 2
    elif t == "checkered":
        pat = ((np.floor(x / p) + np.floor(y / p)) % 2) == 1
    elif t == "grid":
        pat = ((x % p) < 0.22 * p) | ((y % p) < 0.22 * p)
    else:
        raise ValueError(f"unknown texture {t!r}")
    tone, tone2 = np.asarray(scene.tone, np.float32), np.asarray(scene.tone2, np.float32)
    return np.where(pat[..., None], tone2, tone)


def _mask(o: Obj, size: int) -> np.ndarray:
    s = size * _SUPERSAMPLE
    cx, cy, r = o.cx * s, o.cy * s, o.size * s / 2
    m = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(m)
    box = (cx - r, cy - r, cx + r, cy + r)
    if o.shape == "circle":
        draw.ellipse(box, fill=255)
    elif o.shape == "ring":
        draw.ellipse(box, fill=255)
        q = r * 0.55
        draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    elif o.shape == "crescent":
        draw.ellipse(box, fill=255)
        dx, dy = _rot(0.45 * r, -0.2 * r, o.rotation)
        q = r * 0.85
        draw.ellipse((cx + dx - q, cy + dy - q, cx + dx + q, cy + dy + q), fill=0)
    else:
        draw.polygon([(cx + px, cy + py) for px, py in (_rot(u * r, v * r, o.rotation) for u, v in _OUTLINES[o.shape])],
                     fill=255)
    return np.asarray(m.reduce(_SUPERSAMPLE), np.float32) / 255.0


def _rot(u: float, v: float, degrees: float) -> tuple[float, float]:
    a = math.radians(degrees)
    return u * math.cos(a) - v * math.sin(a), u * math.sin(a) + v * math.cos(a)


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5), _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner) for p in pair]


def _heart() -> list[tuple[float, float]]:
    pts = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 + 0.1))
    return pts


_W = 0.33  # half-width of the cross's arms
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
    "star": _star(),
    "cross": [(-_W, -1), (_W, -1), (_W, -_W), (1, -_W), (1, _W), (_W, _W), (_W, 1), (-_W, 1), (-_W, _W),
              (-1, _W), (-1, -_W), (-_W, -_W)],
    "diamond": [(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)],
    "hexagon": _regular(6, 1.0, 0.0),
    "heart": _heart(),
}
