"""How well a mini-Flux training run draws: judge accuracy on the 120-cell grid (every object x style, 2 image
seeds, 25 Euler steps, true CFG 5) of a run's EMA and raw weights, at its latest checkpoint.

    python benchmarks/flux_quality.py runs/flux-distill [runs/other ...] [--weights ema_flux,flux] [--seeds 0,1]

Run it while a run trains to record its curve: each call appends one line per run to `<run>/evals.jsonl`
(step, images seen, seconds, accuracies per object and style), and the EMA's score goes to
`<run>/generator_metrics.json`, which `hirm minicanvas build flux` records in the shipped training.json.
"""

import argparse
import json
from pathlib import Path

import torch

from hirm.eval.minicanvas import generate_grid, score
from hirm.images import write_text_atomic
from hirm.minicanvas import registry
from hirm.minicanvas.build import flux_pipeline


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--weights", default="ema_flux,flux", help="checkpoint files to judge (EMA, raw)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    classifier = registry.load_classifier()
    for run in args.runs:
        state = json.loads((run / "checkpoint" / "state.json").read_text())
        record = {k: state[k] for k in ("step", "images_seen", "seconds")}
        for weights in args.weights.split(","):
            pipe = flux_pipeline(run / "checkpoint" / f"{weights}.safetensors")
            s = score(generate_grid(pipe, classifier, seeds=seeds, steps=registry.SAMPLING["steps"],
                                    guidance=registry.SAMPLING["guidance"], progress=False), None)
            record[weights] = s
            print(f"{run} step {state['step']} {weights}: object {s['object_acc']:.3f} style {s['style_acc']:.3f}"
                  f"  (star {s['per_object']['star']:.2f}, square {s['per_object']['square']:.2f})", flush=True)
            if weights == "ema_flux":
                write_text_atomic(json.dumps(
                    {**s, "seeds": list(seeds), "step": state["step"],
                     "note": f"{len(seeds)} seeds x 120 cells, {registry.SAMPLING['steps']} Euler steps, "
                             f"true CFG {registry.SAMPLING['guidance']}"}, indent=1), run / "generator_metrics.json")
        with (run / "evals.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
