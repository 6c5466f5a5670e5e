"""Time and peak memory of one HiRM erase of N concepts on a CLIP ViT-L/14-sized text encoder (random weights:
cost depends on shape only), each N in a fresh process. Each step takes `--per-step` concepts (sampled, seeded)
and builds their targets at that step, so neither the step's cost nor memory grows with N.

    python benchmarks/multi_concept_scaling.py [--ns 1,10,100,1000] [--per-step 8] [--steps 50] [--out DIR]
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hirm.bench import erase_cost
from hirm.images import write_text_atomic


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ns", default="1,10,100,1000")
    p.add_argument("--per-step", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--shape", default="clip-l")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/multi-concept-scaling")
    a = p.parse_args()
    rows = []
    for n in (int(x) for x in a.ns.split(",")):
        r = erase_cost(a.shape, a.steps, a.threads, concepts=n, concepts_per_step=min(n, a.per_step))
        rows.append(r)
        print(json.dumps(r), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(rows, indent=1), out / "scaling.json")
    plot(rows, out / "scaling.png", f"{a.shape}, {a.steps} steps, <= {a.per_step} concepts/step")
    print(f"wrote {out / 'scaling.png'}")


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Erase time and peak memory against the number of concepts (both axes from 0, so ratios read true)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    ns = [r["concepts"] for r in rows]
    axes[0].plot(ns, [r["erase_seconds"] for r in rows], "o-")
    axes[0].set(xscale="log", xlabel="concepts", ylabel="erase wall time (s)", title=title)
    axes[1].plot(ns, [r["peak_rss_mb"] for r in rows], "o-")
    axes[1].set(xscale="log", xlabel="concepts", ylabel="peak resident memory (MB)")
    for ax in axes:
        ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
