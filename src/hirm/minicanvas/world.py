"""The MiniCanvas world: procedurally drawn objects x styles, with captions.

Everything here is deterministic per seed and needs no data files: `render_batch(n, seed)` draws a
labelled batch on demand. Shapes are rasterised at 4x resolution and box-downsampled (anti-aliased
masks); styles are applied at the final resolution, with textures no finer than 2 px so that they
survive a 4x latent autoencoder and stay recognisable by eye at 32 px.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hirm.errors import HirmError

IMAGE_SIZE = 32
SUPERSAMPLE = 4

OBJECTS: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "cross",
    "crescent moon", "arrow", "diamond", "ring", "hexagon", "lightning bolt",
)
STYLES: tuple[str, ...] = (
    "striped", "polka-dot", "checkered", "outline", "neon glow",
    "pixelated", "watercolor", "gradient", "grainy", "mosaic",
)

# Other ways a caption may name a concept (the world's synonyms; the paraphrase attack uses them too).
OBJECT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "round dot"),
    "square": ("box", "four-sided square"),
    "triangle": ("three-sided shape", "pyramid shape"),
    "star": ("five-pointed star", "starfish shape"),
    "heart": ("love heart", "valentine heart"),
    "cross": ("plus sign", "plus"),
    "crescent moon": ("crescent", "moon"),
    "arrow": ("pointer", "arrowhead"),
    "diamond": ("rhombus", "lozenge"),
    "ring": ("donut", "hoop"),
    "hexagon": ("six-sided shape", "honeycomb cell"),
    "lightning bolt": ("thunderbolt", "zigzag bolt"),
}
STYLE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "striped": ("stripy", "with stripes"),
    "polka-dot": ("spotted", "dotted"),
    "checkered": ("chequered", "checkerboard"),
    "outline": ("line art", "contour drawing"),
    "neon glow": ("neon", "glowing"),
    "pixelated": ("pixel art", "8-bit"),
    "watercolor": ("watercolour", "painted with watercolors"),
    "gradient": ("color gradient", "ombre"),
    "grainy": ("noisy", "film grain"),
    "mosaic": ("tiled", "tile mosaic"),
}
# Super-categories, the semantic targets of HiRM-S.
OBJECT_GROUPS: dict[str, str] = {
    "circle": "curved shape", "ring": "curved shape", "heart": "curved shape", "crescent moon": "curved shape",
    "square": "polygon", "triangle": "polygon", "hexagon": "polygon", "diamond": "polygon",
    "star": "polygon", "cross": "polygon", "arrow": "polygon", "lightning bolt": "polygon",
}
OBJECT_SUPERCATEGORY: dict[str, str] = {o: f"a {g}" for o, g in OBJECT_GROUPS.items()}
STYLE_SUPERCATEGORY = "a pattern"
SHAPE_SUPERCATEGORY = "a shape"


def supercategory(concept: str) -> str:
    """The HiRM-S target prompt for a MiniCanvas concept ("a polygon", "a curved shape" or "a pattern")."""
    if concept in OBJECT_SUPERCATEGORY:
        return OBJECT_SUPERCATEGORY[concept]
    if concept in STYLES:
        return STYLE_SUPERCATEGORY
    raise ValueError(f"{concept!r} is not a MiniCanvas object or style")


COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 20), "yellow": (240, 220, 40),
    "green": (40, 170, 60), "blue": (40, 80, 220), "purple": (140, 50, 190),
    "pink": (240, 120, 180), "white": (245, 245, 245),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128),
    "cream": (240, 230, 200), "navy": (20, 30, 80),
}
SIZES: dict[str, tuple[float, float]] = {"small": (0.30, 0.35), "medium": (0.35, 0.41), "big": (0.41, 0.47)}

TEMPLATES: tuple[str, ...] = (
    "a {style} {object}",
    "a {object} in {style} style",
    "{object}, {style}",
    "a {style} {object} on a {background} background",
    "a picture of a {size} {colour} {object}, {style}",
    "a {size} {style} {object}",
    "a {colour} {object} drawn in {style} style",
    "an image of a {object} in {style} style",
    "a drawing of a {style} {colour} {object}",
    "{style} art of a {object} on {background}",
    "a {object} with a {style} look, {colour} on {background}",
    "a picture of a big {colour} {object} on a {background} background, {style} style",
)
# Captions that leave a concept out: they give "a shape" / "a pattern" (HiRM-S targets) a meaning.
PARTIAL_TEMPLATES: tuple[str, ...] = (
    "a {object}",
    "a {colour} {object}",
    "a {object} with a pattern",
    "a {style} shape",
    "a {style} pattern",
    "a shape in {style} style",
    "a {colour} shape, {style}",
)
# Fixed templates for evaluation (UnlearnCanvas: "A {object} image in {style} style.").
EVAL_TEMPLATES: tuple[str, ...] = ("a {object} image in {style} style",)


@dataclass(frozen=True)
class Sample:
    """Attributes of one drawn image; `caption` renders them as text."""

    object: int
    style: int
    colour: str
    background: str
    size: str

    def caption(self, template: str, object_name: str | None = None, style_name: str | None = None) -> str:
        text = template.format(
            object=object_name or OBJECTS[self.object],
            style=style_name or STYLES[self.style],
            colour=self.colour,
            background=self.background,
            size=self.size,
        )
        return " ".join(text.split())


# ---------------------------------------------------------------- shapes (unit coordinates, radius 1)

def _regular(n: int, phase: float = -math.pi / 2, r: float = 1.0) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 + 0.1))
    return pts


_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
    "star": _star(),
    "heart": _heart(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "arrow": [(-1, -0.22), (0.15, -0.22), (0.15, -0.65), (1, 0), (0.15, 0.65), (0.15, 0.22), (-1, 0.22)],
    "diamond": [(0, -1), (0.58, 0), (0, 1), (-0.58, 0)],
    "hexagon": _regular(6, phase=0.0),
    "lightning bolt": [(0.15, -1), (0.6, -1), (0.2, -0.15), (0.6, -0.15), (-0.35, 1), (-0.05, 0.12),
                       (-0.45, 0.12)],
}


def _shape_mask(name: str, cx: float, cy: float, radius: float, angle: float, resolution: int) -> np.ndarray:
    """Anti-aliased mask in [0, 1] of shape `name`, `resolution` pixels square."""
    big = resolution * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    s = SUPERSAMPLE
    cxs, cys, rs = cx * s, cy * s, radius * s
    ca, sa = math.cos(angle), math.sin(angle)

    def tf(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(cxs + rs * (x * ca - y * sa), cys + rs * (x * sa + y * ca)) for x, y in points]

    if name == "circle":
        draw.ellipse([cxs - rs, cys - rs, cxs + rs, cys + rs], fill=255)
    elif name == "ring":
        draw.ellipse([cxs - rs, cys - rs, cxs + rs, cys + rs], fill=255)
        ri = rs * 0.55
        draw.ellipse([cxs - ri, cys - ri, cxs + ri, cys + ri], fill=0)
    elif name == "crescent moon":
        draw.ellipse([cxs - rs, cys - rs, cxs + rs, cys + rs], fill=255)
        ox, oy = cxs + rs * 0.45 * ca, cys + rs * 0.45 * sa
        ri = rs * 0.85
        draw.ellipse([ox - ri, oy - ri, ox + ri, oy + ri], fill=0)
    else:
        draw.polygon(tf(_POLYGONS[name]), fill=255)
    small = img.resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


# ---------------------------------------------------------------- styles

def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: float = 18) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, amount, 3), 0, 255) / 255.0


def _contrast(c: np.ndarray) -> np.ndarray:
    """A second colour that reads clearly against c (for stripes, dots, checks)."""
    return np.full(3, 0.08, np.float32) if c.mean() > 0.55 else np.full(3, 0.95, np.float32)


def _edge(mask: np.ndarray, width: int) -> np.ndarray:
    img = Image.fromarray((mask * 255).astype(np.uint8))
    inner = np.asarray(img.filter(ImageFilter.MinFilter(2 * width + 1)), np.float32) / 255.0
    return np.clip(mask - inner, 0, 1)


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    img = Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), np.float32) / 255.0


def _coords(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    return xx, yy, rng.uniform(0, math.pi)


def _apply_style(style: str, mask: np.ndarray, fg: np.ndarray, bg: np.ndarray, rng: np.random.Generator,
                 draw_mask: Callable[..., np.ndarray]) -> np.ndarray:
    m = mask[..., None]
    h = IMAGE_SIZE
    canvas = np.broadcast_to(bg, (h, h, 3)).copy()
    if style == "striped":
        xx, yy, a = _coords(rng)
        period = rng.uniform(4.0, 6.0)
        phase = (xx * math.cos(a) + yy * math.sin(a)) / period + rng.uniform(0, 1)
        band = (np.sin(2 * math.pi * phase) > 0).astype(np.float32)[..., None]
        fill = band * fg + (1 - band) * _contrast(fg)
        return canvas * (1 - m) + fill * m
    if style == "polka-dot":
        xx, yy, _ = _coords(rng)
        sp = rng.uniform(5.0, 6.5)
        ox, oy = rng.uniform(0, sp, 2)
        dx = ((xx - ox) % sp) - sp / 2
        dy = ((yy - oy) % sp) - sp / 2
        dot = np.clip(1.6 - np.sqrt(dx**2 + dy**2), 0, 1)[..., None]
        fill = dot * _contrast(fg) + (1 - dot) * fg
        return canvas * (1 - m) + fill * m
    if style == "checkered":
        xx, yy, _ = _coords(rng)
        cell = int(rng.integers(3, 5))
        ox, oy = rng.integers(0, cell, 2)
        chk = (((xx + ox) // cell + (yy + oy) // cell) % 2).astype(np.float32)[..., None]
        fill = chk * fg + (1 - chk) * _contrast(fg)
        return canvas * (1 - m) + fill * m
    if style == "outline":
        e = _edge(mask, 1)[..., None]
        return canvas * (1 - e) + fg * e
    if style == "neon glow":
        dark = np.asarray([0.03, 0.03, 0.08], np.float32) + rng.uniform(0, 0.04, 3).astype(np.float32)
        neon = np.clip(fg * 1.15 + 0.1, 0, 1)
        e = _edge(mask, 1)
        glow = _blur(e, 2.0)
        glow = np.clip(glow * 2.2, 0, 1)[..., None]
        e = e[..., None]
        out = dark * (1 - glow) + neon * 0.75 * glow
        return np.clip(out * (1 - e) + np.clip(neon + 0.25, 0, 1) * e, 0, 1)
    if style == "pixelated":
        # 2-3 px blocks: coarser blocks turn small stars and hexagons into indistinct blobs.
        block = 3 if mask.sum() > 180 else 2
        coarse = draw_mask(-(-IMAGE_SIZE // block), 1.0 / block)
        big = np.kron(coarse, np.ones((block, block), np.float32))[:h, :h]
        pm = (big > 0.5).astype(np.float32)[..., None]
        qfg = np.round(fg * 3) / 3
        return canvas * (1 - pm) + qfg * pm
    if style == "watercolor":
        paper = np.asarray([0.96, 0.94, 0.88], np.float32) + rng.normal(0, 0.01, 3).astype(np.float32)
        canvas = np.broadcast_to(paper, (h, h, 3)).copy()
        soft = _blur(mask, 1.1)
        blot = _blur(rng.uniform(0, 1, (h, h)).astype(np.float32), 2.5)
        blot = (blot - blot.mean()) / (blot.std() + 1e-6)
        alpha = np.clip(soft * (0.85 + 0.15 * blot), 0, 1)[..., None]
        pale = fg * 0.85 + 0.1
        if np.abs(pale - paper).mean() < 0.2:
            pale = pale * 0.55
        ring_edge = _edge(mask, 1)[..., None] * 0.25
        return np.clip(canvas * (1 - alpha) + pale * alpha - ring_edge * 0.3 * (1 - pale), 0, 1)
    if style == "gradient":
        xx, yy, a = _coords(rng)
        t = (xx * math.cos(a) + yy * math.sin(a))
        t = ((t - t.min()) / (t.max() - t.min() + 1e-6))[..., None]
        other = np.roll(fg, 1) * 0.9 + 0.05
        fill = fg * (1 - t) + other * t
        return canvas * (1 - m) + fill * m
    if style == "grainy":
        out = canvas * (1 - m) + fg * m
        grain = rng.normal(0, 0.22, (h // 2, h // 2, 1)).astype(np.float32)
        grain = np.kron(grain, np.ones((2, 2, 1), np.float32))
        return np.clip(out + grain, 0, 1)
    if style == "mosaic":
        # Tiles lie on the 4 px lattice of the generators' latent grid (one tile per latent cell). Measured: a
        # grout grid at a random phase did not survive the 8x8 latent (reconstructions judged mosaic 0.00-0.07
        # after decoder/encoder fine-tunes with edge, spectrum and perceptual losses) and read as gradient.
        cell = 4
        yy, xx = np.mgrid[0:h, 0:h]
        tiles = rng.normal(0, 0.12, (h // cell, h // cell, 3)).astype(np.float32)
        tile = tiles[yy // cell, xx // cell]
        grout = ((xx % cell == 0) | (yy % cell == 0)).astype(np.float32)[..., None]
        fill = np.clip(fg + tile, 0, 1) * (1 - grout) + 0.55 * grout
        return canvas * (1 - m) + fill * m
    raise ValueError(f"unknown style {style!r}")


def draw(sample: Sample, rng: np.random.Generator) -> np.ndarray:
    """Draw one sample as float32 HxWx3 in [0, 1]."""
    lo, hi = SIZES[sample.size]
    radius = rng.uniform(lo, hi) * IMAGE_SIZE
    margin = radius * 0.9
    cx = rng.uniform(margin, IMAGE_SIZE - margin)
    cy = rng.uniform(margin, IMAGE_SIZE - margin)
    angle = math.radians(rng.uniform(-25, 25))
    name = OBJECTS[sample.object]
    mask = _shape_mask(name, cx, cy, radius, angle, IMAGE_SIZE)

    def draw_mask(resolution: int, f: float) -> np.ndarray:
        return _shape_mask(name, cx * f, cy * f, radius * f, angle, resolution)

    fg = _jitter(COLOURS[sample.colour], rng)
    bg = _jitter(BACKGROUNDS[sample.background], rng, amount=10)
    out = _apply_style(STYLES[sample.style], mask, fg, bg, rng, draw_mask)
    return np.clip(out, 0, 1).astype(np.float32)


# Styles that paint their own background; captions name that one so that text and image agree.
_STYLE_BACKGROUND = {"neon glow": "black", "watercolor": "cream"}


def _clash(colour: str, background: str) -> bool:
    diff = np.abs(np.subtract(COLOURS[colour], BACKGROUNDS[background])).mean()
    return bool(diff < 70)


def sample_attributes(rng: np.random.Generator, object: int | None = None, style: int | None = None) -> Sample:
    """Random attributes; `object` / `style` pin those labels. Colour never clashes with background."""
    object = int(rng.integers(len(OBJECTS))) if object is None else object
    style = int(rng.integers(len(STYLES))) if style is None else style
    background = _STYLE_BACKGROUND.get(STYLES[style]) or str(rng.choice(list(BACKGROUNDS)))
    colour = str(rng.choice(list(COLOURS)))
    while _clash(colour, background):
        colour = str(rng.choice(list(COLOURS)))
    return Sample(object=object, style=style, colour=colour, background=background,
                  size=str(rng.choice(list(SIZES))))


ATTRIBUTES = ("object", "style", "colour", "background", "size")


def random_caption(sample: Sample, rng: np.random.Generator, synonym_rate: float = 0.15,
                   partial_rate: float = 0.15, group_rate: float = 0.05) -> tuple[str, frozenset[str]]:
    """A caption for `sample` and the attributes it names ("group": the object only by its super-category).

    Random template; sometimes a synonym, sometimes only a super-category, sometimes a concept left out.
    """
    pool = PARTIAL_TEMPLATES if rng.random() < partial_rate else TEMPLATES
    template = pool[int(rng.integers(len(pool)))]
    mentioned = {a for a in ATTRIBUTES if "{" + a + "}" in template}
    obj = style = None
    if "object" in mentioned and rng.random() < group_rate:
        obj = OBJECT_GROUPS[OBJECTS[sample.object]]
        mentioned = (mentioned - {"object"}) | {"group"}
    elif rng.random() < synonym_rate:
        obj = str(rng.choice(OBJECT_SYNONYMS[OBJECTS[sample.object]]))
    if rng.random() < synonym_rate:
        style = str(rng.choice(STYLE_SYNONYMS[STYLES[sample.style]]))
    return sample.caption(template, obj, style), frozenset(mentioned)


@dataclass
class Batch:
    images: np.ndarray  # uint8, N x H x W x 3
    objects: np.ndarray  # int64, N
    styles: np.ndarray  # int64, N
    captions: list[str]
    samples: list[Sample]
    mentioned: list[frozenset[str]]

    def labels(self) -> dict[str, np.ndarray]:
        """Class index per attribute (the classifier's heads)."""
        return {
            "object": self.objects,
            "style": self.styles,
            "colour": np.asarray([list(COLOURS).index(s.colour) for s in self.samples], np.int64),
            "background": np.asarray([list(BACKGROUNDS).index(s.background) for s in self.samples], np.int64),
            "size": np.asarray([list(SIZES).index(s.size) for s in self.samples], np.int64),
            "group": np.asarray([sorted(set(OBJECT_GROUPS.values())).index(OBJECT_GROUPS[OBJECTS[o]])
                                 for o in self.objects], np.int64),
        }


def render_batch(n: int, seed: int, object: int | None = None, style: int | None = None) -> Batch:
    """Render `n` labelled images with captions, deterministically from `seed`."""
    rng = np.random.default_rng(seed)
    samples = [sample_attributes(rng, object, style) for _ in range(n)]
    images = np.stack([(draw(s, rng) * 255 + 0.5).astype(np.uint8) for s in samples])
    captions, mentioned = zip(*(random_caption(s, rng) for s in samples), strict=True)
    return Batch(
        images=images,
        objects=np.asarray([s.object for s in samples], np.int64),
        styles=np.asarray([s.style for s in samples], np.int64),
        captions=list(captions),
        samples=samples,
        mentioned=list(mentioned),
    )


def render_grid(seed: int = 0, per_pair: int = 1) -> np.ndarray:
    """Every object (rows) x every style (columns), `per_pair` images stacked per cell: uint8 image."""
    rng = np.random.default_rng(seed)
    rows = []
    for o in range(len(OBJECTS)):
        cells = [np.concatenate([(draw(sample_attributes(rng, o, s), rng) * 255).astype(np.uint8)
                                 for _ in range(per_pair)], axis=0) for s in range(len(STYLES))]
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def concept_names(concept: str) -> tuple[str, ...]:
    """A concept's name and its synonyms (objects also by nothing broader: super-categories are shared)."""
    if concept in OBJECT_SYNONYMS:
        return (concept, *OBJECT_SYNONYMS[concept])
    if concept in STYLE_SYNONYMS:
        return (concept, *STYLE_SYNONYMS[concept])
    return (concept,)


def retain_captions(concepts: str | list[str], n: int = 64, seed: int = 12345) -> list[str]:
    """`n` distinct world captions that name none of `concepts` (a retain set for erasing them)."""
    names = [name for c in ([concepts] if isinstance(concepts, str) else concepts) for name in concept_names(c)]
    out: list[str] = []
    k = 0
    while len(out) < n:
        for c in render_batch(256, seed=seed + k).captions:
            if not any(name in c for name in names) and c not in out:
                out.append(c)
        k += 1
    return out[:n]


def _render_spec(spec: tuple[int, int]) -> Batch:
    return render_batch(*spec)


def render_batches(specs: Sequence[tuple[int, int]], workers: int = 1) -> Iterator[Batch]:
    """`render_batch(n, seed)` for each `(n, seed)` in order; over `workers` processes when > 1 (rendering is
    pure numpy/PIL and each batch depends only on its seed, so the result is the same)."""
    if workers <= 1:
        yield from map(_render_spec, specs)
        return
    import multiprocessing

    # fork: workers inherit the imported world and never touch torch or CUDA
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_render_spec, specs)


def render_every_pair(n_per_pair: int, seed: int) -> Batch:
    """`n_per_pair` images of every (object, style) pair, object-major; pair (o, s) uses seed + 1000 o + s."""
    parts = [render_batch(n_per_pair, seed=seed + 1000 * o + s, object=o, style=s)
             for o in range(len(OBJECTS)) for s in range(len(STYLES))]
    return Batch(
        images=np.concatenate([p.images for p in parts]),
        objects=np.concatenate([p.objects for p in parts]),
        styles=np.concatenate([p.styles for p in parts]),
        captions=[c for p in parts for c in p.captions],
        samples=[x for p in parts for x in p.samples],
        mentioned=[m for p in parts for m in p.mentioned],
    )


def concept_domain(concept: str) -> tuple[str, int]:
    """("object" | "style", index) of a MiniCanvas concept name."""
    if concept in OBJECTS:
        return "object", OBJECTS.index(concept)
    if concept in STYLES:
        return "style", STYLES.index(concept)
    raise HirmError(f"{concept!r} is not a MiniCanvas concept; objects: {', '.join(OBJECTS)}; "
                    f"styles: {', '.join(STYLES)}")


def grid_prompts(concept: str) -> list[str]:
    """The concept in four settings, then four prompts without it (the same for every method)."""
    domain, _ = concept_domain(concept)
    same = [c for c in (OBJECTS if domain == "object" else STYLES) if c != concept]
    other = STYLES if domain == "object" else OBJECTS
    def prompt(obj: str, sty: str) -> str:
        return f"a {obj} image in {sty} style"
    if domain == "object":
        return [prompt(concept, s) for s in other[:4]] + [prompt(o, other[0]) for o in same[:4]]
    return [prompt(o, concept) for o in other[:4]] + [prompt(other[0], s) for s in same[:4]]
