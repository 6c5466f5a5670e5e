"""Embedding-input attack (M-ErasureBench's point): whoever runs the model can feed the denoiser the base
encoder's embeddings of the plain concept prompt, bypassing the edited text-encoder layers. By construction it
undoes every text-encoder edit (HiRM, Diff-QuickFix, AdvUnlearn); only an edit of the denoiser (ESD, UCE,
RECE) can hold against it."""

from __future__ import annotations

from dataclasses import dataclass

from hirm.attacks.probe import Probe
from hirm.minicanvas.world import grid_prompts
from hirm.registry import option


@dataclass
class EmbeddingConfig:
    prompts: int = option(4, "the plain concept prompt in this many other-domain settings")


def embedding_probes(pipe, concept: str, patches: list, config: EmbeddingConfig,
                     progress: bool = True) -> list[Probe]:
    return [Probe(p, "base-embedding", bypass_text_encoders=True) for p in grid_prompts(concept)[:config.prompts]]
