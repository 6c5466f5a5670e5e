"""The full MiniCanvas erasure table: every object and every style erased one at a time, for HiRM-R and HiRM-S
under hirm's default recipe and the paper's, with UA / IRA / CRA from generated images judged by the classifier.

    python benchmarks/minicanvas_table.py [--concepts all] [--methods hirm-r,hirm-s] [--recipes default,paper]
        [--seeds 0,1] [--out runs/table]

A recipe is `default` (hirm's MiniCanvas recipe), `paper` (--paper-defaults), or `NAME={json overrides}` on top
of the paper's recipe, for trying a candidate, e.g. 'retain={"retain_weight": 1000, "lr": 1e-4, "steps": 50}'.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import hirm
from hirm.encoders import load_pipeline
from hirm.eval.erasure import evaluate_erasure
from hirm.images import write_text_atomic
from hirm.minicanvas import registry, world


def split_recipes(text: str) -> list[str]:
    """Commas separate recipes, except inside a JSON object."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur] if cur else out


def parse_recipe(text: str) -> tuple[str, dict]:
    name, sep, raw = text.partition("=")
    return name.strip(), json.loads(raw) if sep else {}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", default="all")
    p.add_argument("--methods", default="hirm-r,hirm-s")
    p.add_argument("--recipes", default="default,paper")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", default="runs/table")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    recipes = dict(parse_recipe(r) for r in split_recipes(a.recipes))
    concepts = [*world.OBJECTS, *world.STYLES] if a.concepts == "all" else a.concepts.split(",")
    seeds = tuple(int(s) for s in a.seeds.split(","))
    out = Path(a.out)
    pipe = load_pipeline("minicanvas")
    classifier = registry.load_classifier()
    base = evaluate_erasure("minicanvas", None, [], seeds=seeds, pipe=pipe, classifier=classifier, progress=False)
    print(f"base: object acc {base['object_acc']:.3f}, style acc {base['style_acc']:.3f} "
          f"({base['n_images']} images, {base['seconds']:.0f}s)", flush=True)
    rows = []
    for concept in concepts:
        kind = "object" if concept in world.OBJECTS else "style"
        for method in a.methods.split(","):
            for recipe, overrides in recipes.items():
                extra = {"target": world.supercategory(concept)} if method == "hirm-s" else {}
                start = time.perf_counter()
                patch = hirm.erase(pipe, concept, method=method, kind=kind, paper_defaults=recipe != "default",
                                   progress=False, **extra, **overrides)
                erase_s = time.perf_counter() - start
                r = evaluate_erasure("minicanvas", concept, [patch], seeds=seeds, probe=True, pipe=pipe,
                                     classifier=classifier, progress=False)
                base_acc = base["per_object" if kind == "object" else "per_style"][concept]
                row = {"concept": concept, "domain": kind, "method": method, "recipe": recipe, "base_acc": base_acc,
                       "ua": r["ua"], "ira": r["ira"], "cra": r["cra"], "erase_seconds": round(erase_s, 2),
                       "probe_content_ratio": r["probe"]["content"]["ratio"],
                       "probe_eos_ratio": r["probe"]["eos"]["ratio"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_text_atomic(json.dumps({"base": base, "rows": rows}, indent=1), out / "table.json")
    lines = ["| method | recipe | domain | UA | IRA | CRA | n |", "|---|---|---|---|---|---|---|"]
    for method in a.methods.split(","):
        for recipe in recipes:
            for domain in ("object", "style"):
                sel = [r for r in rows if r["method"] == method and r["recipe"] == recipe and r["domain"] == domain]
                if sel:
                    m = {k: statistics.mean(r[k] for r in sel) for k in ("ua", "ira", "cra")}
                    lines.append(f"| {method} | {recipe} | {domain} | {m['ua']:.3f} | {m['ira']:.3f} | "
                                 f"{m['cra']:.3f} | {len(sel)} |")
    write_text_atomic("\n".join(lines) + "\n", out / "table.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
