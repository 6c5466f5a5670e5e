"""What an attack hands to the shared scoring: a prompt, and how it meets the erased pipeline."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass


@dataclass
class Probe:
    prompt: str
    kind: str  # which variant of the attack made it (e.g. "synonym", "typo")
    # a change to the pipeline while this probe generates (e.g. CCE's learned token embedding)
    setup: Callable[[object], AbstractContextManager] | None = None
    # embedding-input attacks: the base encoders' embeddings reach the denoiser, so only the patches' other
    # parts (a UNet edit) apply
    bypass_text_encoders: bool = False
