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
  the least squares solved again (RECE's rounds with the attack's own embedding instead of a closed-form one).

    python benchmarks/denoiser_screen.py --designs preset,null-r4,adv-r4 --concepts circle,striped,polka-dot,cross
"""

import argparse
import json
import time

import torch
from compare_minicanvas import ATTACK_BUDGET

from hirm import api
from hirm.attacks import attack, budget_options
from hirm.attacks.inversion import CCEConfig, cce_probes
from hirm.encoders import load_pipeline
from hirm.erase import ROBUST_DENOISER, ROBUST_DENOISER_OPTIONS, make_config
from hirm.erase.denoiser import cross_attention_projections, encode
from hirm.erase.uce import erase_set, least_squares, unnamed_pairs
from hirm.eval.minicanvas import evaluate
from hirm.minicanvas import registry
from hirm.patch import SEP, Patch


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


def design(pipe, name: str, concept: str) -> Patch:
    kind, *rest = name.split("-")
    if kind == "preset":
        return preset_half(pipe, concept)
    if kind == "null":
        return null_outputs(pipe, concept, int(rest[0][1:]), values_only=rest[1:] == ["v"])
    if kind == "adv":
        return adversarial_rounds(pipe, concept, int(rest[0][1:]))
    raise SystemExit(f"unknown design {name!r}: preset, null-rR[-v], adv-rR")


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
