"""Attacks that try to bring an erased concept back, behind one entry point:
`attack(pipe, concept, name, patches, classifier) -> AttackResult`.

Each attack is a config dataclass plus one function that returns `Probe`s: prompts to type (and, for attacks
that act below the prompt, a change to the pipeline while it generates). Scoring is shared: every probe is
generated under each seed on the erased model (the patches applied) and on the base model, and the judge
says whether the concept came back. ASR = fraction of (probe, seed) images classified as the concept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Any

from hirm.attacks.embedding import EmbeddingConfig, embedding_probes
from hirm.attacks.inversion import CCEConfig, UnlearnDiffConfig, cce_probes, unlearndiff_probes
from hirm.attacks.paraphrase import ParaphraseConfig, paraphrase_probes
from hirm.attacks.probe import Probe
from hirm.attacks.ringabell import RingABellConfig, ringabell_probes
from hirm.errors import HirmError
from hirm.generate import sample
from hirm.minicanvas.classifier import classify_images
from hirm.minicanvas.world import concept_domain
from hirm.patch import all_applied
from hirm.registry import Entry, Registry, scaled_budget


@dataclass(frozen=True)
class Attack(Entry):
    """An attack: `run(pipe, concept, patches, config, progress=...) -> list[Probe]`."""

    needs_erased_model: bool = False  # False: the probes depend only on the base model, so they can be reused


ATTACKS: Registry[Attack] = Registry("attack", [
    Attack("paraphrase", ParaphraseConfig, paraphrase_probes,
           "the concept said other ways: synonyms, unseen templates, typos, inside a longer sentence"),
    Attack("embedding", EmbeddingConfig, embedding_probes,
           "the base encoder's embeddings fed directly, bypassing any text-encoder edit"),
    Attack("ringabell", RingABellConfig, ringabell_probes,
           "Ring-A-Bell: concept vector on the base encoder, prompt tokens found by a genetic search"),
    Attack("unlearndiff", UnlearnDiffConfig, unlearndiff_probes,
           "UnlearnDiffAtk: prepended tokens optimised against the erased model's denoising loss",
           needs_erased_model=True),
    Attack("cce", CCEConfig, cce_probes, "CCE: a token embedding learned by textual inversion against the erased model",
           needs_erased_model=True),
])


def budget_options(name: str, options: Mapping[str, Any], factor: float) -> dict[str, Any]:
    """Attack `name`'s `options` with its search budget (the config fields marked `budget`: steps, generations,
    population) multiplied by `factor`, to check that a low ASR is not an under-powered attack."""
    config = ATTACKS.config(name, options)
    scaled = scaled_budget(config, factor)
    return {**options, **{f.name: getattr(scaled, f.name) for f in fields(config) if f.metadata.get("budget")}}


@dataclass
class AttackResult:
    attack: str
    concept: str
    asr: float  # on the erased model
    base_asr: float  # the same probes on the base model
    n: int  # images per model: probes x seeds
    seconds: float  # finding the probes and scoring them
    probes: list[dict[str, Any]] = field(default_factory=list)  # prompt, kind, successes per seed
    images: list = field(default_factory=list)  # erased model's images, probe-major

    def row(self) -> dict[str, Any]:
        return {"attack": self.attack, "concept": self.concept, "asr": round(self.asr, 4),
                "base_asr": round(self.base_asr, 4), "n": self.n, "seconds": round(self.seconds, 2)}


def attack(pipe, concept: str, name: str, patches: list, classifier, seeds: tuple[int, ...] = (0, 1),
           denoise_steps: int | None = None, guidance: float | None = None, progress: bool = True,
           cache: dict | None = None, **overrides: Any) -> AttackResult:
    """Run attack `name` against `pipe` with `patches` applied; ASR judged by the MiniCanvas classifier.
    `denoise_steps` and `guidance` set how every probe is sampled; `overrides` are the attack's own options.

    `cache`: a dict kept by a caller that attacks several patches of the same base pipeline; probes that do
    not depend on the erased model, and their base-model hits, are found once and reused from it."""
    domain, index = concept_domain(concept)
    config = ATTACKS.config(name, overrides)
    sampling = {"steps": denoise_steps, "guidance": guidance, "seeds": tuple(seeds)}
    start = time.perf_counter()
    reusable = cache is not None and not ATTACKS[name].needs_erased_model
    key = (name, concept, repr(config), repr(sampling))
    if reusable and key in cache:
        probes, base_hits = cache[key]
    else:
        probes = ATTACKS[name].run(pipe, concept, patches, config, progress=progress)
        if not probes:
            raise HirmError(f"attack {name} found no prompts to try for {concept!r}")
        base_hits = None
    erased_hits, images = _hits(pipe, probes, patches, classifier, domain, index, **sampling)
    if base_hits is None:
        base_hits = erased_hits if not patches else _hits(pipe, probes, [], classifier, domain, index, **sampling)[0]
    if reusable:
        cache[key] = (probes, base_hits)
    seconds = time.perf_counter() - start
    k = len(seeds)
    rows = [{"prompt": p.prompt, "kind": p.kind, "erased": erased_hits[i * k:(i + 1) * k],
             "base": base_hits[i * k:(i + 1) * k]} for i, p in enumerate(probes)]
    return AttackResult(name, concept, sum(erased_hits) / len(erased_hits), sum(base_hits) / len(base_hits),
                        len(erased_hits), seconds, rows, images)


def _hits(pipe, probes: list[Probe], patches: list, classifier, domain: str, index: int, seeds: tuple[int, ...],
          steps: int | None, guidance: float | None) -> tuple[list[bool], list]:
    """Generate every probe under every seed with the probe's view of `patches`; which images show the concept."""
    import numpy as np

    hits: list[bool] = []
    images: list = []
    for i, probe in enumerate(probes):
        views = [v for v in (_view(p, probe) for p in patches) if v.tensors]  # a view may hold nothing to apply
        with all_applied(views, pipe), \
                probe.setup(pipe) if probe.setup is not None else nullcontext():
            ims = sample(pipe, [probe.prompt] * len(seeds), seeds=[1000 * s + i for s in seeds], steps=steps,
                         guidance=guidance)
        pred = classify_images(classifier, ims)[domain]
        hits += [bool(x) for x in np.asarray(pred) == index]
        images += ims
    return hits, images


def _view(patch, probe: Probe):
    """What of `patch` the probe meets: all of it, or (embedding-input attacks) only its non-text-encoder part."""
    if not probe.bypass_text_encoders:
        return patch
    return patch.only([c for c in patch.components if not c.startswith("text_encoder")])


__all__ = ["ATTACKS", "Attack", "AttackResult", "Probe", "attack", "budget_options"]
