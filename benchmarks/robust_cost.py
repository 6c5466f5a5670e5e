"""Erase time of the robust preset beside hirm's default, UCE and AdvUnlearn at the comparison's CPU budget, on
mini-SD, measured in one process one after another (same machine, same moment: read the ratios).

    python benchmarks/robust_cost.py [--concepts circle,striped] [--threads 2]
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
    "hirm --robust": ("hirm", {"robust": True}),
    "uce": ("uce", {}),
    "advunlearn": ("advunlearn", BUDGET["advunlearn"]),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", default="circle,striped")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    pipe = load_pipeline("minicanvas")
    seconds: dict[str, list[float]] = {label: [] for label in RUNS}
    for concept in a.concepts.split(","):
        for label, (method, options) in RUNS.items():
            start = time.perf_counter()
            api.erase(pipe, concept, method=method, progress=False, **options)
            seconds[label].append(time.perf_counter() - start)
            print(json.dumps({"concept": concept, "method": label, "seconds": round(seconds[label][-1], 2)}),
                  flush=True)
    mean = {k: sum(v) / len(v) for k, v in seconds.items()}
    print(json.dumps({"threads": a.threads, "mean_s": {k: round(v, 2) for k, v in mean.items()},
                      "vs_advunlearn": {k: round(v / mean["advunlearn"], 3) for k, v in mean.items()}}))


if __name__ == "__main__":
    main()
