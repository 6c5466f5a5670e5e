"""hirm's default (or the default with a few settings changed) on every MiniCanvas concept of the shipped mini-SD:
UA / IRA / CRA against the base model on the same cells, and what the erased concept's cells are judged as.

    python benchmarks/default_table.py OUT.jsonl [--concepts all] [--hirm-seeds 42,43,44] [--seeds 0,1]
        [--set '{"steps": 200}'] [--threads 2]

One JSON line per erasure, appended as it finishes; a run started again on the same file skips the erasures it
already holds (same concept, HiRM seed and settings), so it can be stopped at any point.
"""

import argparse
import json
import time
from pathlib import Path

import torch

import hirm
from hirm.encoders import load_pipeline
from hirm.eval.minicanvas import evaluate, judged_as, score
from hirm.minicanvas import registry, world


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--concepts", default="all")
    p.add_argument("--hirm-seeds", default="42,43,44")
    p.add_argument("--seeds", default="0,1", help="image seeds")
    p.add_argument("--set", default="{}", help="settings changed from the default, as JSON")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    settings = json.loads(a.set)
    concepts = [*world.OBJECTS, *world.STYLES] if a.concepts == "all" else a.concepts.split(",")
    out = Path(a.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["concept"], row["hirm_seed"], json.dumps(row["settings"], sort_keys=True)))
    pipe = load_pipeline("minicanvas")
    classifier = registry.load_classifier()
    sampling = registry.SAMPLING
    kw = {"seeds": tuple(int(s) for s in a.seeds.split(",")), "steps": sampling["steps"],
          "guidance": sampling["guidance"], "progress": False}
    base_grid = None
    for concept in concepts:
        for seed in (int(s) for s in a.hirm_seeds.split(",")):
            if (concept, seed, json.dumps(settings, sort_keys=True)) in done:
                continue
            if base_grid is None:
                _, base_grid = evaluate(pipe, None, classifier, [], **kw)
            start = time.perf_counter()
            patch = hirm.erase(pipe, concept, seed=seed, progress=False, **settings)
            seconds = time.perf_counter() - start
            m, grid = evaluate(pipe, concept, classifier, [patch], **kw)
            b = score(base_grid, concept)
            row = {"concept": concept, "hirm_seed": seed, "settings": settings, "ua": m["ua"], "ira": m["ira"],
                   "cra": m["cra"], "ira_base": b["ira"], "cra_base": b["cra"], "ua_base": b["ua"],
                   "judged": judged_as(grid, concept), "erase_s": round(seconds, 1), "image_seeds": list(kw["seeds"])}
            print(json.dumps(row), flush=True)
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
