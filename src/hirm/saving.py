"""Atomic save of a whole pipeline folder: write beside it, then rename into place."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hirm.errors import HirmError


def save_pretrained_atomic(pipe, out: Path) -> Path:
    """`pipe.save_pretrained` into a temp folder next to `out`, then rename it to `out`.

    An existing non-empty `out` is refused rather than merged into (a half-old, half-new pipeline is worse
    than an error).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HirmError(f"--out {out} already exists and is not empty: choose a new folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
