"""What differs between the library versions hirm supports, in one place so that call sites stay plain."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _diffusers_takes_dtype() -> bool:
    import diffusers.utils.deprecation_utils as deprecation

    return hasattr(deprecation, "_resolve_dtype")  # added with the rename


def diffusers_dtype(dtype: Any) -> dict[str, Any]:
    """The keyword argument for the weights' precision in diffusers' `from_pretrained`: `dtype` since diffusers
    renamed it (the old `torch_dtype` then prints a FutureWarning on every load), `torch_dtype` before."""
    return {"dtype" if _diffusers_takes_dtype() else "torch_dtype": dtype}


__all__ = ["diffusers_dtype"]
