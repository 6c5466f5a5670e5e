"""Zero-shot transfer of a HiRM patch from mini-SD to mini-Flux (the paper's SD -> Flux claim), measured.

For each concept: the HiRM-R patch made on mini-SD's CLIP encoder, scored on mini-SD and, unchanged, on
mini-Flux (same encoder, which Flux reads only through its pooled vector), also with the T5 pathway blanked
(the limit of a Flux that leans only on the pooled vector); then the same recipe with `--encoder all`, which
also misdirects mini-Flux's T5 encoder. Before that, where prompts reach mini-Flux: classifier accuracy with the
prompt in both pathways, in the pooled CLIP vector only, in the T5 sequence only. Also each model's
UA with the concept's word left out of its prompts (`unnamed_ua`), a reference for a text-side erasure.

    python benchmarks/flux_transfer.py [--concepts circle,heart,...] [--flux PATH ...] [--seeds 0]
        [--erase-seeds 42,0,1] [--out DIR]

`--flux` takes one or more mini-Flux pipeline folders (default: the shipped one), e.g. variants trained with
more or less sequence dropout, to see how the pathway split changes transfer. `--erase-seeds`: HiRM-R's random
target decides what the model draws instead of the concept, so one target can land on another concept (or on
the concept itself); several seeds give the mean (the pooled-only column uses the first).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import hirm
from hirm.encoders import load_pipeline
from hirm.erase import HiRMConfig
from hirm.eval.minicanvas import evaluate, score, unnamed_ua
from hirm.eval.pathways import ablate, pathway_split
from hirm.images import write_text_atomic
from hirm.minicanvas import registry, world

CONCEPTS = "circle,heart,square,cross,striped,watercolor,polka-dot,outline"
METRICS = ("ua", "ira", "cra")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", default=CONCEPTS, help="comma-separated, or 'all'")
    p.add_argument("--flux", nargs="*", default=[], help="mini-Flux pipeline folders (default: the shipped one)")
    p.add_argument("--seeds", default="0", help="image seeds of the evaluation grid")
    p.add_argument("--erase-seeds", default=str(HiRMConfig.seed),
                   help="HiRM seeds (its random target); with several, each patch is scored and the mean reported")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/flux-transfer")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    concepts = [*world.OBJECTS, *world.STYLES] if a.concepts == "all" else a.concepts.split(",")
    seeds = tuple(int(s) for s in a.seeds.split(","))
    erase_seeds = [int(s) for s in a.erase_seeds.split(",")]
    out = Path(a.out)
    classifier = registry.load_classifier()
    sd = load_pipeline("minicanvas")
    sd_grid = {"seeds": seeds, **_sampling("minicanvas"), "progress": False}
    flux_grid = {"seeds": seeds, **_sampling("minicanvas-flux"), "progress": False}
    fluxes = {Path(f).name: load_pipeline(f) for f in a.flux} or {"minicanvas-flux": load_pipeline("minicanvas-flux")}

    report: dict = {"seeds": list(seeds), "erase_seeds": erase_seeds, "models": {}}
    base_sd = evaluate(sd, None, classifier, **sd_grid)[1]
    sd_patches = {c: [hirm.erase(sd, c, method="hirm-r", seed=e, progress=False) for e in erase_seeds]
                  for c in concepts}
    sd_rows = [{"concept": c, "base_acc": _base_acc(base_sd, c), "base": _metrics(score(base_sd, c)),
                "unnamed_ua": _unnamed(sd, classifier, c, sd_grid),
                **_per_seed("sd_patch", [evaluate(sd, c, classifier, [p], **sd_grid)[0] for p in sd_patches[c]])}
               for c in concepts]
    report["models"]["minicanvas"] = {"rows": sd_rows}
    for key in ("base", "sd_patch"):
        _print("minicanvas", key, [r[key] for r in sd_rows])
    _print_unnamed("minicanvas", sd_rows)
    for name, flux in fluxes.items():
        start = time.perf_counter()
        split = pathway_split(flux, classifier, **flux_grid)
        print(f"{name} pathways ({time.perf_counter() - start:.0f}s): {json.dumps(split)}", flush=True)
        base = evaluate(flux, None, classifier, **flux_grid)[1]
        with ablate(flux, "pooled"):
            base_pooled = evaluate(flux, None, classifier, **flux_grid)[1]
        rows = []
        for c in concepts:
            transfer = [evaluate(flux, c, classifier, [p], **flux_grid)[0] for p in sd_patches[c]]
            with ablate(flux, "pooled"):  # the extreme split: a mini-Flux that reads the prompt only from CLIP
                pooled_only = _metrics(evaluate(flux, c, classifier, sd_patches[c][:1], **flux_grid)[0])
            with_t5 = [evaluate(flux, c, classifier, [hirm.erase(flux, c, method="hirm-r", encoder="all", seed=e,
                                                                 progress=False)], **flux_grid)[0]
                       for e in erase_seeds]
            rows.append({"concept": c, "base_acc": _base_acc(base, c), "base": _metrics(score(base, c)),
                         "unnamed_ua": _unnamed(flux, classifier, c, flux_grid),
                         **_per_seed("sd_patch", transfer), **_per_seed("clip_and_t5", with_t5),
                         "pooled_only_base": _metrics(score(base_pooled, c)), "pooled_only_sd_patch": pooled_only})
            print(json.dumps({"model": name, **rows[-1]}), flush=True)
        report["models"][name] = {"pathways": split, "rows": rows}
        for key in ("base", "sd_patch", "clip_and_t5", "pooled_only_base", "pooled_only_sd_patch"):
            _print(name, key, [r[key] for r in rows])
        _print_unnamed(name, rows)
    write_text_atomic(json.dumps(report, indent=1), out / "transfer.json")
    print(f"wrote {out / 'transfer.json'}")


def _sampling(model: str) -> dict:
    s = registry.SAMPLING
    return {"steps": s["steps"], "guidance": s["guidance"]}


def _metrics(result: dict) -> dict:
    return {k: round(result[k], 4) for k in METRICS}


def _per_seed(key: str, results: list[dict]) -> dict:
    """{key: mean over erase seeds, key_per_seed: each seed's} of UA / IRA / CRA."""
    each = [_metrics(r) for r in results]
    return {key: {k: round(statistics.mean(e[k] for e in each), 4) for k in METRICS}, f"{key}_per_seed": each}


def _unnamed(pipe, classifier, concept: str, grid: dict) -> float:
    return round(unnamed_ua(pipe, classifier, concept, **{k: v for k, v in grid.items() if k != "progress"}), 4)


def _base_acc(grid, concept: str) -> float:
    s = score(grid, None)
    return s["per_object"].get(concept, s["per_style"].get(concept))


def _print(model: str, what: str, rows: list[dict]) -> None:
    means = {k: statistics.mean(r[k] for r in rows) for k in METRICS}
    print(f"{model} / {what}: " + ", ".join(f"{k.upper()} {v:.3f}" for k, v in means.items()), flush=True)


def _print_unnamed(model: str, rows: list[dict]) -> None:
    print(f"{model} / concept's word left out: UA {statistics.mean(r['unnamed_ua'] for r in rows):.3f} ("
          + ", ".join(f"{r['concept']} {r['unnamed_ua']:.2f}" for r in rows) + ")", flush=True)


if __name__ == "__main__":
    main()
