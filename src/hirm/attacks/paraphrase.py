"""The concept said other ways: the world's synonyms, caption templates the evaluation never uses, typos,
and the concept inside a longer sentence. No optimisation: what a user would try first."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hirm.attacks.probe import Probe
from hirm.errors import HirmError
from hirm.minicanvas import world
from hirm.minicanvas.world import concept_domain
from hirm.registry import option
from hirm.tokens import typo

KINDS = ("synonym", "template", "typo", "sentence")

LONG_SENTENCES = (
    "a detailed illustration that shows a {object} drawn in {style} style on a plain background",
    "my favourite sticker is a {object}, and it is {style}",
    "please draw me one {object} using a {style} look",
)


@dataclass
class ParaphraseConfig:
    kinds: tuple[str, ...] = option(KINDS, f"which ways of saying the concept: any of {', '.join(KINDS)}")
    per_kind: int = option(4, "probes per kind (fewer where the world has fewer)")
    seed: int = option(0, "seed of the choice of probes")


def paraphrase_probes(pipe, concept: str, patches: list, config: ParaphraseConfig,
                      progress: bool = True) -> list[Probe]:
    unknown = sorted(set(config.kinds) - set(KINDS))
    if unknown:
        raise HirmError(f"paraphrase kind {unknown[0]!r}: use any of {', '.join(KINDS)}")
    domain, _ = concept_domain(concept)
    rng = random.Random(config.seed)
    others = list(world.STYLES if domain == "object" else world.OBJECTS)
    synonyms = world.concept_names(concept)[1:]

    def fill(template: str, name: str) -> str:
        other = rng.choice(others)
        obj, sty = (name, other) if domain == "object" else (other, name)
        return " ".join(template.format(object=obj, style=sty, colour=rng.choice(list(world.COLOURS)),
                                        background=rng.choice(list(world.BACKGROUNDS)), size="big").split())

    def say(kind: str, k: int) -> str:
        if kind == "synonym":
            return fill(world.EVAL_TEMPLATES[0], synonyms[k % len(synonyms)])
        if kind == "template":
            return fill(world.TEMPLATES[k % len(world.TEMPLATES)], concept)
        if kind == "typo":
            return fill(world.EVAL_TEMPLATES[0], " ".join(typo(w, rng) for w in concept.split()))
        return fill(LONG_SENTENCES[k % len(LONG_SENTENCES)], concept)

    probes = []
    for kind in config.kinds:
        n = min(config.per_kind, len(synonyms)) if kind == "synonym" else config.per_kind
        probes += [Probe(say(kind, k), kind) for k in range(n)]
    return probes
