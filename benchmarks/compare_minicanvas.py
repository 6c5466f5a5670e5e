"""The baseline comparison on mini-SD: 4 objects and 4 styles (those the base model draws best), every method,
one run, so that wall-time ratios (to hirm's default method) are measured on the same machine at the same time.

    python benchmarks/compare_minicanvas.py [--seeds 0] [--threads 2] [--out runs/compare]
    python benchmarks/compare_minicanvas.py --attacks all --methods ... --out runs/compare   # ASR columns
    python benchmarks/compare_minicanvas.py --transfer ...   # each patch also scored, unchanged, on mini-Flux

With `--attacks`, every erased model is attacked at the budgets in ATTACK_BUDGET; run into the folder of a finished
comparison, the erasures are reused (only the attacks run).

Denoiser fine-tuning methods run at a reduced budget on this CPU (stated in BUDGET and in the output): ESD's
paper setting is 1000 iterations at lr 1e-5 for SD's 860M-parameter UNet.
"""

import argparse
import json
from pathlib import Path

import torch

from hirm.attacks import budget_options
from hirm.eval.compare import compare, markdown

CONCEPTS = ["circle", "striped", "heart", "watercolor", "square", "polka-dot", "cross", "outline"]
METHODS = ["hirm", "hirm-r", "hirm-s", "quickfix", "esd-x", "esd-u", "uce", "rece", "advunlearn", "fewshot",
           "fewshot/x5", "hirm-r+esd-x", "hirm-r+uce"]
BUDGET = {
    "esd-x": {"steps": 200, "lr": 1e-4, "ddim_steps": 25},
    "esd-u": {"steps": 200, "lr": 1e-4, "ddim_steps": 25},
    "advunlearn": {"steps": 100, "lr": 1e-4, "ddim_steps": 25, "attack_steps": 10},
    # few-shot erasing at its authors' budget (8 steps at lr 1e-5) erases nothing here; x5: 5x the epochs, 10x lr
    "fewshot/x5": {"epochs": 20, "lr": 1e-4},
    "hirm-r/robust": {"robust_rounds": 2},
    "hirm/robust": {"robust": True},  # the robust preset: hirm + UCE with the unnamed reference, one patch
    # the preset's Pareto view: its denoiser half weaker and stronger (UCE's erase scale, 1 by default)
    "hirm/robust-uce0.3": {"robust": True, "uce.erase_scale": 0.3},
    "hirm/robust-uce3": {"robust": True, "uce.erase_scale": 3.0},
    # budget knobs raised towards hirm's UA (equal-UA rows): UCE's erase scale and the authors' added prompts,
    # Diff-QuickFix's ridge term, RECE's rounds, ESD-x's learning rate at the same iterations
    "uce/scale10": {"erase_scale": 10.0},
    "uce/templates": {"templates": ["{}", "a {}", "a picture of a {}", "an image of a {}"]},
    "uce/templates-scale10": {"templates": ["{}", "a {}", "a picture of a {}", "an image of a {}"],
                              "erase_scale": 10.0},
    "quickfix/lamb0.01": {"lamb": 0.01},
    "rece/rounds6": {"epochs": 6},
    "esd-x/lr3e-4": {"steps": 200, "lr": 3e-4, "ddim_steps": 25},
    "hirm-r/robust-both": {"robust_rounds": 2, "robust_slots": "both"},
}
ATTACKS = ["paraphrase", "embedding", "ringabell", "unlearndiff", "cce"]
# a few probes each, sampled once per seed: an ASR moves in steps of 1/8 (paraphrase) or 1/4 (the others)
ATTACK_BUDGET = {
    "paraphrase": {"per_kind": 2},
    "ringabell": {"generations": 20, "population": 32},
    "unlearndiff": {"steps": 20},
    "cce": {"steps": 50},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", default=",".join(CONCEPTS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--attacks", default="", help="comma-separated attacks, or all")
    p.add_argument("--attack-budget", type=float, default=1.0,
                   help="multiplies each attack's search budget (steps, generations, population) over ATTACK_BUDGET")
    p.add_argument("--transfer", action="store_true", help="also score each patch, unchanged, on mini-Flux")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    methods = a.methods.split(",")
    attacks = ATTACKS if a.attacks == "all" else [x for x in a.attacks.split(",") if x]
    attack_budget = {name: budget_options(name, ATTACK_BUDGET.get(name, {}), a.attack_budget) for name in attacks}
    options = {k: v for k, v in {**BUDGET, **attack_budget}.items() if k in methods or k in attacks
               or any(k in m.split("+") for m in methods)}
    table = compare("minicanvas", a.concepts.split(","), methods, seeds=tuple(int(s) for s in a.seeds.split(",")),
                    options=options, out=Path(a.out), attacks=attacks, transfer=a.transfer)
    print(markdown(table))
    print(json.dumps(table["summary"]))


if __name__ == "__main__":
    main()
