"""Several concepts erased from mini-SD: one joint HiRM optimisation vs. the two ways of combining
single-concept patches (the paper's weight averaging, and sequential erasure, each concept erased on the model
already patched for the previous ones).

For K = 2, 5, 10 concepts (objects and styles mixed, nested sets): UA on the erased concepts and the accuracy
of every other concept on the cells where no erased concept appears (what should be left alone).

    python benchmarks/multi_concept.py [--ks 2,5,10] [--seeds 0] [--out runs/multi-concept]
        [--ways joint,sequential,average] [--joint 'joint,steps150={"steps": 150}']

`--joint` lists joint recipes: a name alone is hirm's default recipe, `NAME={json}` overrides its fields
(`steps`, `lr`, `retain_weight`, `layers`, ...), as in minicanvas_table.py.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from minicanvas_table import parse_recipe, split_recipes

import hirm
from hirm.encoders import load_pipeline
from hirm.eval.minicanvas import generate_grid, score_concepts
from hirm.images import write_text_atomic
from hirm.minicanvas import registry
from hirm.patch import Patch, all_applied

CONCEPTS = ("circle", "striped", "heart", "watercolor", "star", "polka-dot", "square", "checkered", "triangle",
            "neon glow")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ks", default="2,5,10")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/multi-concept")
    p.add_argument("--ways", default="joint,sequential,average")
    p.add_argument("--joint", default="joint", help="joint recipes: NAME or NAME={json overrides}, comma-separated")
    a = p.parse_args()
    ways = a.ways.split(",")
    joint_recipes = dict(parse_recipe(r) for r in split_recipes(a.joint)) if "joint" in ways else {}
    combined = "sequential" in ways or "average" in ways
    torch.set_num_threads(a.threads)
    ks = [int(k) for k in a.ks.split(",")]
    seeds = tuple(int(s) for s in a.seeds.split(","))
    pipe = load_pipeline("minicanvas")
    classifier = registry.load_classifier()
    sampling = registry.SAMPLING

    def scored(patches: list[Patch], concepts: list[str]) -> dict:
        with all_applied(patches, pipe):  # in order: a sequential patch was made on the model the earlier ones make
            grid = generate_grid(pipe, classifier, seeds=seeds, steps=sampling["steps"],
                                 guidance=sampling["guidance"], progress=False)
        return score_concepts(grid, concepts)

    def timed(fn):
        start = time.perf_counter()
        value = fn()
        return value, time.perf_counter() - start

    concepts = list(CONCEPTS[: max(ks)])
    separate, chain, rows = [], [], []
    separate_s = chain_s = 0.0
    for i, concept in enumerate(concepts):
        if combined:
            patch, s = timed(lambda c=concept: hirm.erase(pipe, c, progress=False))
            separate.append(patch)
            separate_s += s
            if i > 0:  # the first link of the chain is the first separate patch
                with all_applied(chain, pipe):
                    patch, s = timed(lambda c=concept: hirm.erase(pipe, c, progress=False))
            chain.append(patch)
            chain_s += s
        k = i + 1
        if k not in ks:
            continue
        results = []
        for name, overrides in joint_recipes.items():
            joint, joint_s = timed(lambda k=k, o=overrides: hirm.erase(pipe, concepts[:k], progress=False, **o))
            results.append((name, [joint], joint_s))
        if "sequential" in ways:
            results.append(("sequential", chain[:k], chain_s))
        if "average" in ways:
            results.append(("average", [Patch.average(separate[:k])], separate_s))
        for way, patches, seconds in results:
            row = {"k": k, "way": way, "erase_s": round(seconds, 1), **scored(patches, concepts[:k])}
            rows.append(row)
            print(f"K={k:2d} {way:10s} UA {row['ua']:.3f}  kept {row['kept_acc']:.3f}  erase {seconds:.0f}s",
                  flush=True)
    base = scored([], [])
    report = {"seeds": list(seeds), "concepts": concepts, "base_kept_acc": base["kept_per_concept"], "rows": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(report, indent=1), out / "multi_concept.json")
    lines = ["| K | way | UA | kept acc | base kept acc | erase s |", "|---|---|---|---|---|---|"]
    for r in rows:
        base_kept = sum(base["kept_per_concept"][c] for c in r["kept_per_concept"]) / len(r["kept_per_concept"])
        lines.append(f"| {r['k']} | {r['way']} | {r['ua']:.3f} | {r['kept_acc']:.3f} | {base_kept:.3f} | "
                     f"{r['erase_s']:.0f} |")
    write_text_atomic("\n".join(lines) + "\n", out / "multi_concept.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
