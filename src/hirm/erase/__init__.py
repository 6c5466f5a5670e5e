"""Erasure methods behind one entry point: `erase(model, concept, method=..., **overrides) -> Patch`.

Each method is a config dataclass (its paper's defaults) plus one function; `METHODS` registers them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hirm.encoders import TextEncoder, find_clip_encoders, load_text_encoders
from hirm.erase.hirm import KIND_DEFAULTS, HiRMConfig, erase_hirm
from hirm.errors import HirmError
from hirm.patch import Patch


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    run: Callable[..., Patch]
    fixed: dict[str, Any]  # config values that define the method (e.g. HiRM's variant)
    summary: str


METHODS: dict[str, Method] = {
    "hirm-r": Method("hirm-r", HiRMConfig, erase_hirm, {"variant": "r"},
                     "HiRM, final-layer representation misdirected to a random target"),
    "hirm-s": Method("hirm-s", HiRMConfig, erase_hirm, {"variant": "s"},
                     "HiRM, final-layer representation misdirected to a semantic prompt (--target)"),
}


def make_config(method: str, kind: str | None = None, **overrides: Any):
    """The method's config: its defaults, then the concept-kind preset, then explicit overrides."""
    if method not in METHODS:
        raise HirmError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    spec = METHODS[method]
    values: dict[str, Any] = {}
    if kind is not None:
        if kind not in KIND_DEFAULTS:
            raise HirmError(f"--kind {kind!r}: use one of {', '.join(KIND_DEFAULTS)}")
        values.update(KIND_DEFAULTS[kind])
    values.update({k: v for k, v in overrides.items() if v is not None})
    values.update(spec.fixed)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise HirmError(f"{method} has no option {unknown[0]!r}; options: {', '.join(sorted(fields))}")
    return spec.config_cls(**values)


def erase(model: Any, concept: str, method: str = "hirm-r", encoder: str | list[str] | None = None,
          kind: str | None = None, progress: bool = True, **overrides: Any) -> Patch:
    """Erase `concept` from `model` (a pipeline, a `TextEncoder` list, or a path / id) and return the patch.

    `encoder` picks CLIP encoders by component name (default: all of them); `kind` ("object", "style",
    "nudity") applies the paper's per-kind steps and lr; other keyword arguments override config fields.
    """
    if not isinstance(concept, str) or not concept.strip():
        raise HirmError("the concept is empty: pass the text to erase, e.g. --concept 'Van Gogh'")
    config = make_config(method, kind=kind, **overrides)
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        encoders = load_text_encoders(model, which=encoder)
    else:
        encoders = find_clip_encoders(model, which=encoder)
    return METHODS[method].run(encoders, concept.strip(), config, progress=progress)


__all__ = ["METHODS", "HiRMConfig", "Method", "TextEncoder", "erase", "make_config"]
