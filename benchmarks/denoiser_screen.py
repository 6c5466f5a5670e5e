"""Screen designs of the robust preset's denoiser half against the attacks that go around the text encoder (CCE at
1x and 4x the comparison's budget, the embedding-input attack), each design alone (no text half) on mini-SD: UA /
IRA / CRA on one grid seed, each attack under 2 seeds per probe.

Designs (`--designs`, comma-separated):
- `preset`: the preset's own denoiser half (UCE, unnamed reference; `ROBUST_DENOISER_OPTIONS`);
- `null-rR` / `null-rR-v`: the preset's half, then in every cross-attention key and value projection (`-v`: values
  only) the R output directions that best separate the concept's outputs from its unnamed reference's, relative
  to the preserved prompts' (generalised eigenvectors), projected out: no input embedding can then reach them;
- `adv-rR`: the preset's half, then R rounds of: a CCE token learnt against the current edit (seeds 100, 101, ...,
  not the attack's 0), its prompts' embeddings mapped to the same prompts without it, added to the erased set,
  the least squares solved again (RECE's rounds with the attack's own embedding instead of a closed-form one);
- `advu-rR-G[-sS][-lrL][-kK][-nN]`: the preset's half, then R rounds of adversarial training of the UNet (AdvUnlearn's
  design on the denoiser): a placeholder token learnt against the current UNet by textual inversion on hirm's
  generic templates and images of the concept (seeds 100, 101, ...; images 1000: not the attack's), then S AdamW
  steps (lr L) of the UNet's parameter group G (ESD's: xattn, noxattn, full) so that every conditioning met so far
  (the concept's names in the templates, each round's learnt token in them) is denoised as the base UNet denoises
  the same prompt without the concept, while the retain captions, the other concepts and the empty prompt are
  denoised as the base UNet does (weight K); with `-nN`, the concept's conditionings are pushed N times their
  difference from the reference beyond it (ESD's negative guidance).

    python benchmarks/denoiser_screen.py --designs preset,null-r4,adv-r4 --concepts circle,striped,polka-dot,cross
"""

import argparse
import json
import time

import torch
from compare_minicanvas import ATTACK_BUDGET

from hirm import api
from hirm.attacks import attack, budget_options
from hirm.attacks.inversion import CCEConfig, cce_probes, textual_inversion
from hirm.encoders import find_text_encoders, load_pipeline
from hirm.erase import ROBUST_DENOISER, ROBUST_DENOISER_OPTIONS, make_config
from hirm.erase.denoiser import (
    concept_latents,
    cross_attention_projections,
    encode,
    image_latents,
    unet_parameter_names,
)
from hirm.erase.hirm import GENERIC_TEMPLATES
from hirm.erase.loop import OptimConfig, optimise, temporarily
from hirm.erase.prompts import default_retain_prompts, known_synonyms, replace_concept
from hirm.erase.uce import default_preserve, erase_set, least_squares, unnamed_pairs
from hirm.eval.minicanvas import evaluate
from hirm.minicanvas import registry, world
from hirm.minicanvas.classifier import to_tensor
from hirm.patch import SEP, Patch
from hirm.tokens import embeddings_at


def preset_half(pipe, concept: str) -> Patch:
    return api.erase(pipe, concept, ROBUST_DENOISER, progress=False, **ROBUST_DENOISER_OPTIONS)


def with_tensors(patch: Patch, tensors: dict[str, torch.Tensor]) -> Patch:
    return Patch(tensors=tensors, concepts=patch.concepts, method=patch.method, config=patch.config,
                 fingerprints=patch.fingerprints, info=patch.info, seconds=patch.seconds)


def erased_and_kept(pipe, concept: str) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The preset half's (concept embeddings, unnamed reference) pairs and the preserved prompts' embeddings."""
    pairs, preserve = erase_set(pipe, [concept], make_config(ROBUST_DENOISER, **ROBUST_DENOISER_OPTIONS))
    return pairs[0], encode(pipe, list(preserve)).flatten(0, 1)


@torch.no_grad()
def null_outputs(pipe, concept: str, rank: int, values_only: bool, alpha: float = 0.1) -> Patch:
    patch = preset_half(pipe, concept)
    pairs, kept = erased_and_kept(pipe, concept)
    difference = torch.cat([a - b for a, b in pairs]).double()
    kept = kept.double()
    tensors = dict(patch.tensors)
    for name, module in cross_attention_projections(pipe.unet).items():
        if values_only and name.endswith("to_k.weight"):
            continue
        w0 = module.weight.double()
        d, q = difference @ w0.T, kept @ w0.T
        b = q.T @ q / len(q)
        b = b + alpha * torch.trace(b) / len(b) * torch.eye(len(b), dtype=torch.float64)
        whiten = torch.linalg.inv(torch.linalg.cholesky(b))
        _, vectors = torch.linalg.eigh(whiten @ (d.T @ d / len(d)) @ whiten.T)
        u, _ = torch.linalg.qr(whiten.T @ vectors[:, -rank:])
        key = f"unet{SEP}{name}"
        tensors[key] = ((torch.eye(len(u), dtype=torch.float64) - u @ u.T) @ tensors[key].double()).float()
    return with_tensors(patch, {k: t.contiguous() for k, t in tensors.items()})


def adversarial_rounds(pipe, concept: str, rounds: int) -> Patch:
    config = make_config(ROBUST_DENOISER, **ROBUST_DENOISER_OPTIONS)
    patch = preset_half(pipe, concept)
    with torch.no_grad():
        pairs, kept = erased_and_kept(pipe, concept)
    originals = {n: m.weight.detach().clone() for n, m in cross_attention_projections(pipe.unet).items()}
    for r in range(rounds):
        cce = CCEConfig(**{**ATTACK_BUDGET["cce"], "seed": 100 + r})
        probes = cce_probes(pipe, concept, [patch], cce, progress=False)
        with probes[0].setup(pipe), torch.no_grad():
            pairs = pairs + unnamed_pairs(pipe, [p.prompt for p in probes], [cce.placeholder])
        keys, reference = torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])
        with torch.no_grad():
            edited = least_squares(originals, keys, reference, kept, config)
        patch = with_tensors(patch, {f"unet{SEP}{n}": t.contiguous() for n, t in edited.items()})
    return patch


def adversarial_unet(pipe, concept: str, rounds: int, group: str, steps: int = 100, lr: float = 1e-4,
                     keep_weight: float = 1.0, guidance: float = 0.0, batch: int = 8,
                     placeholder: str = "sks") -> Patch:
    patch = preset_half(pipe, concept)
    unet, encoders = pipe.unet, find_text_encoders(pipe)
    names = unet_parameter_names(unet, group)
    current = {k.split(SEP, 1)[1]: t for k, t in patch.tensors.items()}
    base = {n: p.detach().clone() for n, p in unet.named_parameters() if n in current or n in names}
    token_id = pipe.tokenizer(placeholder, add_special_tokens=False)["input_ids"][0]
    concept_names = [concept, *known_synonyms(encoders, concept)]
    named = [t.format(n) for n in concept_names for t in GENERIC_TEMPLATES]
    with_token = [t.format(placeholder) for t in GENERIC_TEMPLATES]
    token_ids = pipe.tokenizer(with_token, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
    keep = ["", *default_retain_prompts(encoders, concept), *default_preserve(pipe, [concept])]
    latents = concept_latents(pipe, concept, 32, seed=1000)
    keep_latents = image_latents(pipe, to_tensor(world.render_batch(64, seed=1001).images) * 2 - 1)
    named_condition = encode(pipe, named)
    named_reference = encode(pipe, [replace_concept(p, concept_names) for p in named])
    conditions, references = [], []
    keep_conditions = encode(pipe, keep)
    g = torch.Generator().manual_seed(7)

    def noisy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (batch,), generator=g)
        x = x[torch.randint(len(x), (batch,), generator=g)]
        return pipe.scheduler.add_noise(x, torch.randn(x.shape, generator=g), t), t

    for r in range(rounds):
        with temporarily(unet, current):
            value = textual_inversion(pipe, token_ids, token_id, latents, CCEConfig(steps=50, seed=100 + r))
        with torch.no_grad(), embeddings_at(pipe.text_encoder, lambda x: x == token_id, value):
            conditions.append(encode(pipe, with_token))
        references.append(encode(pipe, [replace_concept(p, [placeholder]) for p in with_token]))
        learnt, learnt_reference = torch.cat(conditions), torch.cat(references)

        def loss_fn(step: int, learnt: torch.Tensor = learnt, learnt_reference: torch.Tensor = learnt_reference
                    ) -> torch.Tensor:
            (z, t), (zk, tk) = noisy(latents), noisy(keep_latents)
            i = torch.randint(len(named), (batch // 2,), generator=g)  # half the concept's names, half learnt tokens
            j = torch.randint(len(learnt), (batch - batch // 2,), generator=g)
            cond = torch.cat([named_condition[i], learnt[j]])
            ref = torch.cat([named_reference[i], learnt_reference[j]])
            k = torch.randint(len(keep_conditions), (batch,), generator=g)
            with torch.no_grad(), temporarily(unet, base):
                target = unet(torch.cat([z, zk]), torch.cat([t, tk]),
                              encoder_hidden_states=torch.cat([ref, keep_conditions[k]])).sample
                if guidance:  # ESD's target: away from what the base UNet makes of the conditioning
                    target[:batch] -= guidance * (unet(z, t, encoder_hidden_states=cond).sample - target[:batch])
            pred = unet(torch.cat([z, zk]), torch.cat([t, tk]),
                        encoder_hidden_states=torch.cat([cond, keep_conditions[k]])).sample
            return (torch.nn.functional.mse_loss(pred[:batch], target[:batch])
                    + keep_weight * torch.nn.functional.mse_loss(pred[batch:], target[batch:]))

        with temporarily(unet, current):
            result = optimise(unet, names, loss_fn, OptimConfig(steps, lr, (0.9, 0.999), 1e-8, 0.0),
                              desc=f"adversarial round {r}", progress=False)
        current.update(result.tensors)
        print(json.dumps({"round": r, "loss_first10": round(sum(result.losses[:10]) / 10, 4),
                          "loss_last10": round(sum(result.losses[-10:]) / 10, 4)}), flush=True)
    return with_tensors(patch, {f"unet{SEP}{n}": t.contiguous() for n, t in current.items()})


def design(pipe, name: str, concept: str) -> Patch:
    kind, *rest = name.split("-")
    if kind == "preset":
        return preset_half(pipe, concept)
    if kind == "null":
        return null_outputs(pipe, concept, int(rest[0][1:]), values_only=rest[1:] == ["v"])
    if kind == "adv":
        return adversarial_rounds(pipe, concept, int(rest[0][1:]))
    if kind == "advu":
        fields = {"s": ("steps", int), "lr": ("lr", float), "k": ("keep_weight", float), "n": ("guidance", float)}
        values = {}
        for part in rest[2:]:
            prefix = part.rstrip("0123456789.")
            key, kind_of = fields[prefix]
            values[key] = kind_of(part[len(prefix):])
        return adversarial_unet(pipe, concept, int(rest[0][1:]), rest[1], **values)
    raise SystemExit(f"unknown design {name!r}: preset, null-rR[-v], adv-rR, advu-rR-G[-sS][-lrL][-kK][-nN]")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--designs", default="preset,null-r4,adv-r4")
    p.add_argument("--concepts", default="circle,striped,polka-dot,cross")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe, classifier = load_pipeline("minicanvas"), registry.load_classifier()
    attacks = {"embedding": {}, "cce": budget_options("cce", ATTACK_BUDGET["cce"], 1),
               "cce-4x": budget_options("cce", ATTACK_BUDGET["cce"], 4)}
    for name in a.designs.split(","):
        for concept in a.concepts.split(","):
            start = time.perf_counter()
            patch = design(pipe, name, concept)
            scores, _ = evaluate(pipe, concept, classifier, [patch], seeds=(0,))
            row = {"design": name, "concept": concept, **{k: round(scores[k], 3) for k in ("ua", "ira", "cra")}}
            for label, opts in attacks.items():
                row[label] = attack(pipe, concept, label.split("-")[0], [patch], classifier, seeds=(0, 1),
                                    progress=False, **opts).asr
            print(json.dumps({**row, "s": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
