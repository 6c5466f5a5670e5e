"""The prompts erasers share: retain sets (prompts whose representations an erasure should leave in place: the
MiniCanvas world's own captions for its encoder, else everyday prompts), the names a model is known to give a
concept, the concept put amid retain prompts, and a prompt with the concept's words left out."""

from __future__ import annotations

import random

from hirm.encoders import TextEncoder
from hirm.errors import HirmError
from hirm.minicanvas import registry, world

GENERIC_PROMPTS: tuple[str, ...] = (
    "a photo of a dog", "a photo of a cat", "a red car parked on a street", "a bowl of fruit on a table",
    "a mountain landscape at sunset", "a portrait of a woman smiling", "a man riding a bicycle",
    "a city skyline at night", "a cup of coffee", "a bird sitting on a branch", "a beach with palm trees",
    "an oil painting of a river", "a watercolor of flowers", "a pencil sketch of a house", "a child playing football",
    "a plate of pasta", "a snowy forest", "a sailboat on the sea", "a cartoon of a robot", "a vintage photograph",
    "a bookshelf full of books", "a horse in a field", "a modern kitchen interior", "a close-up of a leaf",
    "an astronaut in space", "a busy market street", "a teddy bear on a bed", "a lighthouse on a cliff",
    "a bowl of soup", "a group of friends laughing", "a dragon made of clouds", "a painting in the style of Monet",
    "a blue abstract pattern", "a green apple", "an old man reading a newspaper", "a train crossing a bridge",
)


def default_retain_prompts(encoders: list[TextEncoder], concepts: str | list[str]) -> tuple[str, ...]:
    """Prompts to keep in place: the MiniCanvas world's own captions for its encoder, else the everyday set
    without the prompts that name a concept."""
    concepts = concept_list(concepts)
    if all(registry.is_minicanvas(e.model) for e in encoders):
        return tuple(world.retain_captions(concepts))
    lowered = [c.lower() for c in concepts]
    return tuple(p for p in GENERIC_PROMPTS if not any(c in p.lower() for c in lowered))


def known_synonyms(encoders: list[TextEncoder], concept: str) -> tuple[str, ...]:
    """Other names of the concept that the model is known to understand: the MiniCanvas world's synonyms for
    its encoder; none for other models (pass variants: --set variants='[...]')."""
    if all(registry.is_minicanvas(e.model) for e in encoders):
        return tuple(world.concept_names(concept)[1:])
    return ()


def concept_list(concept: str | list[str]) -> list[str]:
    """One concept or a list of them, as a list."""
    return [concept] if isinstance(concept, str) else list(concept)


def context_templates(retain_prompts: tuple[str, ...] | list[str], n: int, seed: int) -> tuple[str, ...]:
    """`n` seeded retain prompts as templates around the concept: half "a {}, <prompt>", half "<prompt>, {}"."""
    if not n:
        return ()
    chosen = random.Random(seed).sample(list(retain_prompts), min(n, len(retain_prompts)))
    chosen = [p.replace("{", "").replace("}", "") for p in chosen]
    half = (len(chosen) + 1) // 2
    return tuple(f"a {{}}, {p}" for p in chosen[:half]) + tuple(f"{p}, {{}}" for p in chosen[half:])


def replace_concept(prompt: str, names: list[str], by: str = "") -> str:
    """`prompt` with the first of `names` it contains (longest first) replaced by `by`, by default left out
    (whitespace tidied): "a photo of Van Gogh" -> "a photo of"; with by="Monet", "a photo of Monet"."""
    for name in sorted(names, key=len, reverse=True):
        if name and name in prompt:
            return " ".join(prompt.replace(name, f" {by} ", 1).split())
    raise HirmError(f"the prompt {prompt!r} does not contain the concept")
