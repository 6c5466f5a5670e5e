"""Atomic save of a whole pipeline folder: write beside it, then rename into place."""

from __future__ import annotations

from pathlib import Path

from hirm.io import atomic_dir, check_output_dir


def save_pretrained_atomic(pipe, out: Path) -> Path:
    """`pipe.save_pretrained` into a temp folder next to `out`, then rename it to `out`.

    An existing non-empty `out` is refused rather than merged into (a half-old, half-new pipeline is worse
    than an error). The folder's files get the umask's modes, like any `save_pretrained`.
    """
    out = Path(out)
    check_output_dir(out, empty=True)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out
