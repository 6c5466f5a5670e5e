"""hirm's default on mini-SD with `--preserve` (a neighbour held in place) and with `--target` (the concept erased
into a definite other concept, or into its super-category word): UA / IRA / CRA on the full grid, the preserved
neighbour's accuracy against the base model's, and what the erased concept's cells are judged as.

    python benchmarks/retarget_preserve.py preserve+target runs/retarget.jsonl [--threads 2] [--concepts circle,square]
        [--pairs star:hexagon] [--seeds 0,1] [--hirm-seed 42] [--preserve-weight 4000]

Each result is one JSON line appended to the output file (a run can be stopped and its lines kept).
"""

import argparse
import json
import time

import torch

import hirm
from hirm.encoders import find_text_encoders, load_pipeline
from hirm.eval.minicanvas import evaluate, judged_as, score
from hirm.minicanvas import registry, world
from hirm.minicanvas.world import concept_domain

PRESERVE_PAIRS = [("star", "hexagon"), ("striped", "checkered")]
TARGET_CONCEPTS = ["circle", "square", "striped", "polka-dot"]
SUPERCATEGORY_CONCEPTS = ["square", "striped"]


def moved(pipe, patch, concept: str, keep: str) -> dict[str, float]:
    """How far the patch moves the final hidden states of evaluation-template prompts (mean |h' - h| / |h|): those
    naming the kept neighbour, the erased concept, and every other cell."""
    cells = [(o, s) for o in world.OBJECTS for s in world.STYLES]
    named = {"keep": [c for c in cells if keep in c], "concept": [c for c in cells if concept in c],
             "others": [c for c in cells if keep not in c and concept not in c]}
    prompts = {k: [f"a {o} image in {s} style" for o, s in v] for k, v in named.items()}

    (enc,) = find_text_encoders(pipe, which="text_encoder")

    def finals(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return enc.model(input_ids=enc.tokenize(texts, truncate=True)).last_hidden_state

    before = {k: finals(v) for k, v in prompts.items()}
    with patch.applied(pipe):
        after = {k: finals(v) for k, v in prompts.items()}
    return {f"{k}_moved": round(float(((after[k] - before[k]).norm(dim=(1, 2)) / before[k].norm(dim=(1, 2))).mean()), 4)
            for k in prompts}


def accuracy(metrics: dict, concept: str) -> float:
    return metrics["per_object"].get(concept, metrics["per_style"].get(concept))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", help="preserve, target or preserve+target")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--concepts", default=",".join(TARGET_CONCEPTS), help="concepts for --target")
    p.add_argument("--pairs", default=",".join(f"{c}:{k}" for c, k in PRESERVE_PAIRS), help="ERASE:KEEP,...")
    p.add_argument("--seeds", default="0,1", help="image seeds")
    p.add_argument("--hirm-seed", type=int, default=42)
    p.add_argument("--preserve-weight", type=float, default=None, help="weight of the preserve term (default: "
                   "the retain weight)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = load_pipeline("minicanvas")
    classifier = registry.load_classifier()
    sampling = registry.SAMPLING
    kw = {"seeds": tuple(int(x) for x in a.seeds.split(",")), "steps": sampling["steps"],
          "guidance": sampling["guidance"], "progress": False}

    def write(**row) -> None:
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")

    def erase_and_score(concept: str, **options):
        start = time.perf_counter()
        patch = hirm.erase(pipe, concept, progress=False, seed=a.hirm_seed, **options)
        seconds = round(time.perf_counter() - start, 1)
        metrics, grid = evaluate(pipe, concept, classifier, [patch], **kw)
        return metrics, grid, seconds, patch

    base, base_grid = evaluate(pipe, None, classifier, [], **kw)

    def against_base(concept: str) -> dict[str, float]:
        b = score(base_grid, concept)
        return {"ua_base": b["ua"], "ira_base": b["ira"], "cra_base": b["cra"]}

    write(kind="base", per_object=base["per_object"], per_style=base["per_style"])
    if "target" in a.what:
        for concept in a.concepts.split(","):
            domain, i = concept_domain(concept)
            names = world.OBJECTS if domain == "object" else world.STYLES
            targets = [names[(i + 1) % len(names)]]  # a definite other concept: the next one of its domain
            if concept in SUPERCATEGORY_CONCEPTS:
                targets.append(world.supercategory(concept).removeprefix("a "))
            for target in targets:
                m, grid, seconds, _ = erase_and_score(concept, target=target)
                write(kind="target", concept=concept, target=target, ua=m["ua"], ira=m["ira"], cra=m["cra"],
                      judged=judged_as(grid, concept), seconds=seconds, **against_base(concept),
                      per_object=m["per_object"], per_style=m["per_style"])

    if "preserve" in a.what:
        for concept, keep in (pair.split(":") for pair in a.pairs.split(",")):
            for preserve in ((), (keep,)):
                weight = {"preserve_weight": a.preserve_weight} if preserve and a.preserve_weight is not None else {}
                m, _, seconds, patch = erase_and_score(concept, preserve=preserve, **weight)
                write(kind="preserve", concept=concept, keep=keep, preserve=list(preserve), **weight,
                      hirm_seed=a.hirm_seed, image_seeds=list(kw["seeds"]), ua=m["ua"], ira=m["ira"],
                      cra=m["cra"], keep_acc=accuracy(m, keep), keep_base=accuracy(base, keep), seconds=seconds,
                      **against_base(concept), **moved(pipe, patch, concept, keep))


if __name__ == "__main__":
    main()
