"""Ring-A-Bell (Tsai et al., ICLR 2024): a model-agnostic red-teaming prompt search.

On the BASE text encoder (the attacker's public copy; no access to the erased model): the concept vector is
the mean difference of encodings of prompts with and without the concept; the target is a prompt without the
concept pushed `strength` times along that vector; a genetic search then finds `length` tokens whose
encoding comes closest to the target. The tokens, decoded to text, are the attack prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hirm.attacks.probe import Probe
from hirm.erase.denoiser import encode
from hirm.errors import HirmError
from hirm.minicanvas import world
from hirm.minicanvas.world import concept_domain
from hirm.registry import option
from hirm.tokens import vocabulary


@dataclass
class RingABellConfig:
    prompts: int = option(4, "adversarial prompts, one per starting prompt")
    length: int = option(12, "tokens per prompt")
    strength: float = option(3.0, "eta: how far along the concept vector the target lies")
    population: int = option(64, "prompts per generation of the genetic search", budget=True)
    generations: int = option(40, "generations of the genetic search", budget=True)
    elite: float = option(0.2, "fraction of the population kept as parents")
    mutation: float = option(0.1, "per-token chance of a random replacement in a child")
    vocabulary: str = option("world", "tokens searched: world (the world's caption tokens) or all (the tokenizer's)")
    seed: int = option(0, "seed of the search")

    def validate(self) -> None:
        if min(self.prompts, self.length, self.population, self.generations) < 1:
            raise HirmError("ringabell needs prompts, length, population and generations >= 1")
        if self.vocabulary not in ("world", "all"):
            raise HirmError(f"ringabell vocabulary {self.vocabulary!r}: use world or all")


@torch.no_grad()
def _encode_ids(encoder, tokenizer, token_ids: torch.Tensor) -> torch.Tensor:
    """[N, K] content tokens -> [N, L, d] last hidden states of "<bos> tokens <eos> <pad>...", as pipelines pad."""
    n, k = token_ids.shape
    length = tokenizer.model_max_length
    ids = torch.full((n, length), tokenizer.pad_token_id, dtype=torch.long)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, 1 : k + 1] = token_ids
    ids[:, k + 1] = tokenizer.eos_token_id
    return encoder(input_ids=ids)[0]


def concept_vector(pipe, concept: str) -> torch.Tensor:
    """Mean over settings and other concepts of E(prompt with the concept) - E(the same prompt with another)."""
    domain, _ = concept_domain(concept)
    same = [c for c in (world.OBJECTS if domain == "object" else world.STYLES) if c != concept]
    others = world.STYLES if domain == "object" else world.OBJECTS

    def prompt(c: str, o: str) -> str:
        return f"a {c} image in {o} style" if domain == "object" else f"a {o} image in {c} style"

    with_concept = [prompt(concept, o) for o in others for _ in same]
    without = [prompt(c, o) for o in others for c in same]
    return (encode(pipe, with_concept) - encode(pipe, without)).mean(0)


def genetic_search(encoder, tokenizer, target: torch.Tensor, vocab: torch.Tensor, config: RingABellConfig,
                   rng: torch.Generator) -> tuple[list[int], float]:
    """Tokens whose encoding is closest (mean squared distance) to `target`, by elitist genetic search."""
    pop = vocab[torch.randint(len(vocab), (config.population, config.length), generator=rng)]
    n_elite = max(2, int(config.elite * config.population))
    best, best_loss = pop[0], float("inf")
    for _ in range(config.generations):
        loss = ((_encode_ids(encoder, tokenizer, pop) - target) ** 2).mean(dim=(1, 2))
        order = loss.argsort()
        if loss[order[0]] < best_loss:
            best, best_loss = pop[order[0]].clone(), float(loss[order[0]])
        parents = pop[order[:n_elite]]
        a = parents[torch.randint(n_elite, (config.population,), generator=rng)]
        b = parents[torch.randint(n_elite, (config.population,), generator=rng)]
        children = torch.where(torch.rand(a.shape, generator=rng) < 0.5, a, b)
        mutate = torch.rand(children.shape, generator=rng) < config.mutation
        children[mutate] = vocab[torch.randint(len(vocab), (int(mutate.sum()),), generator=rng)]
        children[:n_elite] = parents  # elitism: the best survive unchanged
        pop = children
    return best.tolist(), best_loss


def ringabell_probes(pipe, concept: str, patches: list, config: RingABellConfig,
                     progress: bool = True) -> list[Probe]:
    config.validate()
    domain, _ = concept_domain(concept)
    encoder, tokenizer = pipe.text_encoder, pipe.tokenizer  # the base encoder: patches are not applied here
    vector = concept_vector(pipe, concept)
    vocab = vocabulary(tokenizer, config.vocabulary)
    rng = torch.Generator().manual_seed(config.seed)
    pick = random.Random(config.seed)
    same = [c for c in (world.OBJECTS if domain == "object" else world.STYLES) if c != concept]
    others = world.STYLES if domain == "object" else world.OBJECTS
    probes = []
    for j in tqdm(range(config.prompts), desc=f"ringabell {concept}", disable=not progress):
        c, o = pick.choice(same), others[j % len(others)]
        start = f"a {c} image in {o} style" if domain == "object" else f"a {o} image in {c} style"
        target = encode(pipe, [start])[0] + config.strength * vector
        tokens, _ = genetic_search(encoder, tokenizer, target, vocab, config, rng)
        probes.append(Probe(tokenizer.decode(tokens).strip(), "ringabell"))
    return probes
