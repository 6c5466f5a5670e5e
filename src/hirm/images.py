"""Image grids and atomic image writes."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from hirm.errors import HirmError
from hirm.io import atomic_file, write_text


def grid(images: list[Image.Image], cols: int, labels: list[str] | None = None, scale: int = 1,
         row_labels: list[str] | None = None) -> Image.Image:
    """Tile equally sized images row-major; optional caption above each column and left of each row."""
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = (len(images) + cols - 1) // cols
    top = 12 if labels else 0
    left = 8 * max((len(r) for r in row_labels), default=0) if row_labels else 0
    canvas = Image.new("RGB", (left + cols * w, top + rows * h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas.paste(im.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (left + c * w, top + r * h))
    for c, text in enumerate(labels or []):
        draw.text((left + c * w + 2, 0), text[: max(1, w // 6)], fill="black")
    for r, text in enumerate(row_labels or []):
        draw.text((0, top + r * h + h // 2 - 5), text, fill="black")
    return canvas


def image_format(path: str | os.PathLike, what: str = "--out") -> str:
    """The PIL format that writes `path`, from its suffix (.png, .jpg, .webp, ...); a HirmError for a name PIL
    cannot write (checked before sampling, not after)."""
    Image.init()
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise HirmError(f"{what} {path}: {suffix or 'no suffix'} is not an image format hirm can write; use a "
                        "name ending in .png (or .jpg, .webp)")
    return fmt


def save_atomic(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save via a temp file in the same folder and rename, so a reader never sees half a file."""
    path = Path(path)
    fmt = image_format(path, what="image")
    with atomic_file(path) as tmp:
        image.save(tmp, format=fmt)
    return path


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 text via a temp file in the same folder and rename; the temp file never outlives a failure."""
    return write_text(text, path)
