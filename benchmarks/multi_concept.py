"""Several concepts erased from mini-SD: one joint optimisation (hirm, or any method that takes a list) vs.
three ways of combining single-concept patches: the paper's weight averaging, sequential erasure (each concept
erased on the model already patched for the previous ones) and stacking (the sum of their changes).

For K = 2, 5, 10 concepts (objects and styles mixed, nested sets): UA on the erased concepts and the accuracy
of every other concept on the cells where no erased concept appears (what should be left alone). `--draws N`
erases N seeded draws of K concepts per K instead of the nested fixed list.

    python benchmarks/multi_concept.py [--ks 2,5,10] [--seeds 0] [--out runs/multi-concept]
        [--ways joint,sequential,average,stacked] [--draws 3] [--joint 'joint,steps150={"steps": 150}']

`--joint` lists joint recipes: a name alone is hirm's default recipe, `NAME={json}` overrides its fields
(`steps`, `lr`, `retain_weight`, `layers`, ...), as in minicanvas_table.py.
"""

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

import torch
from minicanvas_table import parse_recipe, split_recipes

import hirm
from hirm.encoders import load_pipeline
from hirm.eval.minicanvas import generate_grid, score_concepts
from hirm.images import write_text_atomic
from hirm.minicanvas import registry, world
from hirm.patch import SEP, Patch, all_applied

CONCEPTS = ("circle", "striped", "heart", "watercolor", "star", "polka-dot", "square", "checkered", "triangle",
            "neon glow")


def stacked(patches: list[Patch], pipe) -> Patch:
    """Every single patch's change added to the base weights (task arithmetic; SPM's stacking of per-concept
    adapters, here with hirm's single patches): K times the average's change."""
    average, k = Patch.average(patches), len(patches)
    base = {f"{c}{SEP}{n}": t.detach() for c in average.components
            for n, t in getattr(pipe, c).named_parameters()}
    return dataclasses.replace(average, tensors={n: k * t - (k - 1) * base[n] for n, t in average.tensors.items()},
                               method="stacked(" + ",".join(p.method for p in patches) + ")")


def concept_sets(ks: list[int], draws: int) -> list[tuple[int, int, list[str]]]:
    """(K, draw, concepts) to erase: the first K of CONCEPTS (draw 0) when `draws` is 0, else `draws` seeded
    draws per K, half objects and half styles in a seeded order (draw d uses seed 1000 * K + d)."""
    if not draws:
        return [(k, 0, list(CONCEPTS[:k])) for k in ks]
    sets = []
    for k in ks:
        for d in range(draws):
            rng = random.Random(1000 * k + d)
            chosen = rng.sample(world.OBJECTS, (k + 1) // 2) + rng.sample(world.STYLES, k // 2)
            rng.shuffle(chosen)
            sets.append((k, d, chosen))
    return sets


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ks", default="2,5,10")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/multi-concept")
    p.add_argument("--ways", default="joint,sequential,average", help="joint, sequential, average, stacked")
    p.add_argument("--draws", type=int, default=0,
                   help="0: the nested fixed list; N: N seeded draws of K concepts per K (half objects, half styles)")
    p.add_argument("--joint", default="joint", help="joint recipes: NAME or NAME={json overrides}, comma-separated")
    a = p.parse_args()
    ways = a.ways.split(",")
    joint_recipes = dict(parse_recipe(r) for r in split_recipes(a.joint)) if "joint" in ways else {}
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

    separate: dict[str, tuple[Patch, float]] = {}  # single-concept patches, made once, shared by every set

    def single(concept: str) -> tuple[Patch, float]:
        if concept not in separate:
            separate[concept] = timed(lambda: hirm.erase(pipe, concept, progress=False))
        return separate[concept]

    rows = []
    for k, draw, concepts in concept_sets(ks, a.draws):
        results = []
        for name, overrides in joint_recipes.items():
            joint, joint_s = timed(lambda c=concepts, o=overrides: hirm.erase(pipe, c, progress=False, **o))
            results.append((name, [joint], joint_s))
        if "sequential" in ways:
            chain, chain_s = [single(concepts[0])[0]], single(concepts[0])[1]
            for concept in concepts[1:]:  # each erased on the model the earlier links make
                with all_applied(chain, pipe):
                    patch, s = timed(lambda c=concept: hirm.erase(pipe, c, progress=False))
                chain.append(patch)
                chain_s += s
            results.append(("sequential", chain, chain_s))
        if "average" in ways:
            results.append(("average", [Patch.average([single(c)[0] for c in concepts])],
                            sum(single(c)[1] for c in concepts)))
        if "stacked" in ways:
            results.append(("stacked", [stacked([single(c)[0] for c in concepts], pipe)],
                            sum(single(c)[1] for c in concepts)))
        for way, patches, seconds in results:
            row = {"k": k, "draw": draw, "way": way, "erase_s": round(seconds, 2), **scored(patches, concepts)}
            rows.append(row)
            print(f"K={k:2d} draw {draw} {way:10s} UA {row['ua']:.3f}  kept {row['kept_acc']:.3f}  "
                  f"erase {seconds:.0f}s  {', '.join(concepts)}", flush=True)
    base = scored([], [])
    report = {"seeds": list(seeds), "base_kept_acc": base["kept_per_concept"], "rows": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(report, indent=1), out / "multi_concept.json")
    text = table(report)
    write_text_atomic(text, out / "multi_concept.md")
    print(text)


def table(report: dict) -> str:
    """Markdown: one row per erasure, then per K and way the mean over draws (kept minus the base model's kept
    accuracy of the same concepts) and the worst draw."""
    base = report["base_kept_acc"]
    lines = ["| K | draw | way | UA | kept acc | base kept acc | erase s | concepts |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[int, str], list[tuple[float, float, float, float]]] = {}
    for r in report["rows"]:
        base_kept = statistics.mean(base[c] for c in r["kept_per_concept"])
        lines.append(f"| {r['k']} | {r['draw']} | {r['way']} | {r['ua']:.3f} | {r['kept_acc']:.3f} | "
                     f"{base_kept:.3f} | {r['erase_s']:.3g} | {', '.join(r['concepts'])} |")
        groups.setdefault((r["k"], r["way"]), []).append(
            (r["ua"], min(r["ua_per_concept"].values()), r["kept_acc"] - base_kept, r["erase_s"]))
    lines += ["", "| K | way | draws | mean UA | worst concept's UA | kept - base, mean | kept - base, worst draw | "
              "erase s (median) |", "|---|---|---|---|---|---|---|---|"]
    for (k, way), v in groups.items():
        lines.append(f"| {k} | {way} | {len(v)} | {statistics.mean(x[0] for x in v):.3f} | "
                     f"{min(x[1] for x in v):.2f} | {statistics.mean(x[2] for x in v):+.3f} | "
                     f"{min(x[2] for x in v):+.3f} | {statistics.median(x[3] for x in v):.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
