"""Retain sets: prompts whose representations an erasure should leave in place (the MiniCanvas world's own
captions for its encoder, else everyday prompts), and the names a model is known to give a concept."""

from __future__ import annotations

from hirm.encoders import TextEncoder
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
    concepts = [concepts] if isinstance(concepts, str) else list(concepts)
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
