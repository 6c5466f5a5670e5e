"""Attacks that learn prompt-token embeddings against the ERASED model's denoiser: UnlearnDiffAtk (discrete
prepended tokens) and CCE (a new token by textual inversion). Both minimise the denoising loss on images of
the concept (rendered MiniCanvas images, encoded by the model's VAE) through the patched text encoder and UNet.

UnlearnDiffAtk (Zhang et al., 2024): `prefix` tokens before the concept prompt, optimised in embedding space and
projected to the nearest vocabulary token on every forward (straight-through), so the result is a prompt.
CCE, Circumventing Concept Erasure (Pham et al., 2024): one placeholder token whose input embedding is learned
freely; prompts then use it, with the learned embedding in place while they generate.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hirm.attacks.probe import Probe
from hirm.erase.denoiser import concept_latents, denoising_loss, require_unet_pipeline
from hirm.errors import HirmError
from hirm.minicanvas.world import grid_prompts
from hirm.patch import all_applied
from hirm.registry import option
from hirm.tokens import embeddings_at, frozen, nearest_tokens, positions, straight_through, vocabulary, with_slots


@dataclass
class UnlearnDiffConfig:
    prompts: int = option(4, "adversarial prompts, one per other-domain setting")
    prefix: int = option(5, "prepended tokens (the paper's 5)")
    steps: int = option(40, "Adam steps per prompt", budget=True)
    lr: float = option(0.05, "learning rate in embedding space")
    images: int = option(16, "concept images the denoising loss is taken on")
    batch: int = option(4, "images per step")
    vocabulary: str = option("world", "tokens searched: world (the world's caption tokens) or all (the tokenizer's)")
    seed: int = option(0, "seed of the start tokens, batches and noise")


@dataclass
class CCEConfig:
    placeholder: str = option("sks", "a single rare token of the vocabulary; its input embedding is learned")
    prompts: int = option(4, "prompts using the placeholder, one per other-domain setting")
    steps: int = option(100, "textual-inversion steps", budget=True)
    lr: float = option(5e-3, "learning rate (textual inversion's)")
    images: int = option(16, "concept images the denoising loss is taken on")
    batch: int = option(4, "images per step")
    seed: int = option(0, "seed of the batches and noise")


def _setting_prompts(concept: str, n: int, name: str | None = None) -> list[str]:
    prompts = grid_prompts(concept)[:4]
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    return prompts if name is None else [p.replace(concept, name, 1) for p in prompts]


def _ids(pipe, prompts: list[str]) -> torch.Tensor:
    return pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids


def unlearndiff_probes(pipe, concept: str, patches: list, config: UnlearnDiffConfig,
                       progress: bool = True) -> list[Probe]:
    require_unet_pipeline(pipe, "unlearndiff")
    latents = concept_latents(pipe, concept, config.images, config.seed)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    vocab = vocabulary(pipe.tokenizer, config.vocabulary)
    candidates = table[vocab]
    g = torch.Generator().manual_seed(config.seed)
    probes = []
    with all_applied(patches, pipe), frozen(pipe.text_encoder, pipe.unet, pipe.vae):
        for prompt in tqdm(_setting_prompts(concept, config.prompts), desc=f"unlearndiff {concept}",
                           disable=not progress):
            ids = _ids(pipe, [prompt])  # "<bos> prefix prompt <eos> <pad>...": the prefix ids are placeholders
            full = with_slots(ids, config.prefix, vocab)
            start = vocab[torch.randint(len(vocab), (config.prefix,), generator=g)]
            soft = table[start].clone().requires_grad_(True)
            opt = torch.optim.Adam([soft], lr=config.lr)

            for _ in range(config.steps):
                hard = straight_through(soft, candidates)  # forward: real tokens; gradient: to `soft`
                idx = torch.randint(len(latents), (config.batch,), generator=g)
                with embeddings_at(pipe.text_encoder, positions(1, config.prefix), hard):
                    loss = denoising_loss(pipe, full.expand(config.batch, -1), latents[idx], g)
                opt.zero_grad()
                loss.backward()
                opt.step()
            tokens = vocab[nearest_tokens(soft, candidates)].tolist()
            probes.append(Probe(f"{pipe.tokenizer.decode(tokens).strip()} {prompt}", "unlearndiff"))
    return probes


def cce_probes(pipe, concept: str, patches: list, config: CCEConfig, progress: bool = True) -> list[Probe]:
    require_unet_pipeline(pipe, "cce")
    token = pipe.tokenizer(config.placeholder, add_special_tokens=False)["input_ids"]
    if len(token) != 1:
        raise HirmError(f"CCE placeholder {config.placeholder!r} is {len(token)} tokens: pick one that is a single "
                        "token of the vocabulary (e.g. 'sks')")
    token_id = token[0]
    latents = concept_latents(pipe, concept, config.images, config.seed)
    prompts = _setting_prompts(concept, config.prompts, name=config.placeholder)
    ids = _ids(pipe, prompts)
    with all_applied(patches, pipe):
        value = textual_inversion(pipe, ids, token_id, latents, config, desc=f"cce {concept}", progress=progress)

    def setup(p) -> AbstractContextManager:
        return embeddings_at(p.text_encoder, lambda x: x == token_id, value)

    return [Probe(prompt, "cce", setup=setup) for prompt in prompts]


def textual_inversion(pipe, ids: torch.Tensor, token_id: int, latents: torch.Tensor, config: CCEConfig,
                      desc: str = "textual inversion", progress: bool = False) -> torch.Tensor:
    """CCE's search: the input embedding ([1, d]) of `token_id` that minimises the pipeline's denoising loss on
    `latents` under the prompts `ids` (each holding the token), from the token's own embedding; the pipeline's
    weights as they are (patched or not) and untouched."""
    g = torch.Generator().manual_seed(config.seed)
    learned = pipe.text_encoder.get_input_embeddings().weight[token_id].detach().clone()[None].requires_grad_(True)
    opt = torch.optim.Adam([learned], lr=config.lr)
    with frozen(pipe.text_encoder, pipe.unet, pipe.vae), \
            embeddings_at(pipe.text_encoder, lambda x: x == token_id, learned):
        for _ in tqdm(range(config.steps), desc=desc, disable=not progress):
            idx = torch.randint(len(latents), (config.batch,), generator=g)
            rows = torch.randint(len(ids), (config.batch,), generator=g)
            loss = denoising_loss(pipe, ids[rows], latents[idx], g)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return learned.detach().clone()
