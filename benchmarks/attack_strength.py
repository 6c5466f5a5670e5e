"""Attack strength: one attack at several search budgets on the base mini-SD and on an erased one, per concept, 2
seeds per probe, in one process (is a low ASR an under-powered attack?). Budgets are factors over the comparison's
ATTACK_BUDGET (`4`: 4x its budget fields) or explicit options (`steps=200;lr=0.02`).

    python benchmarks/attack_strength.py --attack ringabell --budgets 1,4 --method hirm-r
    python benchmarks/attack_strength.py --attack cce --budgets "steps=50;lr=0.02,steps=200;lr=0.02"
"""

import argparse
import json
import time

import torch
from compare_minicanvas import ATTACK_BUDGET, CONCEPTS

from hirm import api
from hirm.attacks import attack, budget_options
from hirm.encoders import load_pipeline
from hirm.minicanvas import registry


def options(attack_name: str, budget: str) -> dict:
    table = ATTACK_BUDGET.get(attack_name, {})
    if "=" not in budget:
        return budget_options(attack_name, table, float(budget))
    return {**table, **{k: json.loads(v) for k, v in (kv.split("=") for kv in budget.split(";"))}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--attack", required=True)
    p.add_argument("--budgets", default="1,4", help="comma-separated factors or ';'-joined KEY=VALUE options")
    p.add_argument("--method", default="", help="the erased model's method ('': the base model only)")
    p.add_argument("--concepts", default=",".join(CONCEPTS))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe, classifier = load_pipeline("minicanvas"), registry.load_classifier()
    for concept in a.concepts.split(","):
        patches = [api.erase(pipe, concept, a.method, progress=False)] if a.method else []
        for budget in a.budgets.split(","):
            opts = options(a.attack, budget)
            start = time.perf_counter()
            r = attack(pipe, concept, a.attack, patches, classifier, seeds=(0, 1), progress=False, **opts)
            print(json.dumps({"concept": concept, "budget": budget, "options": opts, "base": r.base_asr,
                              a.method or "base": r.asr, "s": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
