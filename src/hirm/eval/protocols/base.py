"""What a protocol is: its prompts, its default sampler settings, how it scores one image, and how it sums up."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from hirm.eval.protocols.prompts import Item


@dataclass
class Protocol:
    """Base of every protocol; a subclass's dataclass fields are its options (recorded in run.json)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    steps: ClassVar[int]
    guidance: ClassVar[float]
    scheduler: ClassVar[str]  # a key of runner.SCHEDULERS, or "keep"
    seed: ClassVar[int]  # for prompts whose file gives none

    def settings(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def check(self) -> None:
        """Raise HirmError for missing or bad options, before any model is loaded."""

    def items(self, prompts: Path | None, limit: int | None) -> list[Item]:
        raise NotImplementedError

    def load(self, device: torch.device) -> None:
        """Load the scoring models (detector, classifiers, CLIP) once per process."""

    def score(self, items: list[Item], images: list) -> list[dict[str, Any]]:
        raise NotImplementedError

    def summarize(self, items: list[Item], records: list[dict]) -> dict[str, Any]:
        raise NotImplementedError

    def compare(self, run_dir: Path, items: list[Item], variants: list[str]) -> dict[str, Any]:
        """Figures that compare variants (FID of erased vs base); none by default."""
        return {}
