"""Representation-space locality of HiRM recipes on the MiniCanvas text encoder.

For each concept and recipe: erase, then the median relative change of the final hidden states of captions
that name the concept (IN) and captions that do not (OUT), per region of token positions.

    python benchmarks/locality.py [--concepts star,ring,mosaic,grainy] [--out runs/locality.json]
"""

import argparse
import json

import hirm
from hirm.encoders import load_text_encoders
from hirm.eval.erasure import probe_prompts
from hirm.eval.locality import locality_probe
from hirm.minicanvas import world

RECIPES = {
    "paper": {},
    "concept-positions": {"positions": "concept"},
    "no-biases": {"train_biases": False},
    "retain": {"retain_weight": 1.0},
    "concept+no-bias": {"positions": "concept", "train_biases": False},
    "concept+no-bias+retain": {"positions": "concept", "train_biases": False, "retain_weight": 1.0},
    "retain-1e3": {"retain_weight": 1e3},
    "retain-1e4": {"retain_weight": 1e4},
    "retain-1e5": {"retain_weight": 1e5},
}

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", default="star,ring,mosaic,grainy")
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--model", default="minicanvas")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    encoders = load_text_encoders(a.model)
    rows = []
    for concept in a.concepts.split(","):
        kind = "object" if concept in world.OBJECTS else "style"
        in_p, out_p = probe_prompts(concept)
        for name in a.recipes.split(","):
            over = dict(RECIPES[name])
            if over.get("retain_weight"):
                over["retain_prompts"] = tuple(world.retain_captions(concept))
            patch = hirm.erase(encoders, concept, kind=kind, progress=False, **over)
            r = locality_probe(encoders[0], patch, in_p, out_p)
            row = {"concept": concept, "recipe": name, **{k: r[k] for k in ("content", "eos", "padding", "bos")},
                   "seconds": round(sum(patch.seconds.values()), 2)}
            rows.append(row)
            cells = [f"{k} {r[k]['in']:.3f}/{r[k]['out']:.3f} ({r[k]['ratio']:.1f}x)"
                     for k in ("content", "eos", "padding")]
            print(f"{concept:10s} {name:24s} " + "  ".join(cells), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)
