"""Erase time of hirm's default beside its earlier recipe, the robust preset, the closed forms (UCE, Diff-QuickFix)
and AdvUnlearn at the comparison's CPU budget, on mini-SD, measured in one process one after another (same
machine, same moment: read the ratios).

    python benchmarks/erase_time.py [--concepts circle,striped] [--runs hirm,uce] [--threads 2]
"""

import argparse
import json
import time

import torch
from compare_minicanvas import BUDGET

from hirm import api
from hirm.encoders import load_pipeline

RUNS = {  # label: (method, options)
    "hirm": ("hirm", {}),
    # the default until 2026-12-03: the retain term on the final hidden states, 200 steps
    "hirm 2026-12-02 (retain at final; 200 steps)": ("hirm", {"retain_at": "final", "retain_weight": 1000.0,
                                                              "steps": 200}),
    "hirm --robust": ("hirm", {"robust": True}),
    "uce": ("uce", {}),
    "quickfix": ("quickfix", {}),
    "advunlearn": ("advunlearn", BUDGET["advunlearn"]),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", default="circle,striped")
    p.add_argument("--runs", default=",".join(RUNS), help="labels to time, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    unknown = [label for label in a.runs.split(",") if label not in RUNS]
    if unknown:
        raise SystemExit(f"unknown run {unknown[0]!r}; known: {', '.join(RUNS)}")
    runs = {label: RUNS[label] for label in a.runs.split(",")}
    torch.set_num_threads(a.threads)
    pipe = load_pipeline("minicanvas")
    seconds: dict[str, list[float]] = {label: [] for label in runs}
    for concept in a.concepts.split(","):
        for label, (method, options) in runs.items():
            start = time.perf_counter()
            api.erase(pipe, concept, method=method, progress=False, **options)
            seconds[label].append(time.perf_counter() - start)
            print(json.dumps({"concept": concept, "method": label, "seconds": round(seconds[label][-1], 2)}),
                  flush=True)
    mean = {k: sum(v) / len(v) for k, v in seconds.items()}
    ratios = {f"vs_{ref}": {k: round(v / mean[ref], 3) for k, v in mean.items()}
              for ref in ("uce", "advunlearn") if ref in mean}
    print(json.dumps({"threads": a.threads, "mean_s": {k: round(v, 2) for k, v in mean.items()}, **ratios}))


if __name__ == "__main__":
    main()
