"""What mini-SD and a mini-Flux checkpoint draw for some objects: the judge's calls on their grid cells (every
style, the grid prompt, 2 seeds, 25 steps, CFG 5), and a picture, one row per model and object (first 10 cells).

    python benchmarks/flux_confusion.py training/minicanvas-flux/ema_flux.safetensors --objects star,hexagon \\
        --out docs/img/flux-star-hexagon.png
"""

import argparse
from collections import Counter
from pathlib import Path

import torch

from hirm.eval.minicanvas import generate_grid
from hirm.images import grid, save_atomic
from hirm.minicanvas import registry, world
from hirm.minicanvas.build import flux_pipeline


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint", type=Path, help="a FluxTrainer checkpoint (a run's ema_flux.safetensors)")
    p.add_argument("--objects", default="star,hexagon")
    p.add_argument("--out", type=Path, default=Path("flux-confusion.png"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    classifier = registry.load_classifier()
    tiles, labels = [], []
    for name, pipe in (("mini-SD", registry.load_pipeline("minicanvas")), ("mini-Flux", flux_pipeline(a.checkpoint))):
        drawn = generate_grid(pipe, classifier, seeds=(0, 1), steps=registry.SAMPLING["steps"],
                             guidance=registry.SAMPLING["guidance"], progress=False)
        for obj in a.objects.split(","):
            cells = drawn.objects == world.OBJECTS.index(obj)
            calls = Counter(world.OBJECTS[i] for i in drawn.pred_objects[cells]).most_common()
            print(f"{name} {obj}: " + ", ".join(f"{o} {n}" for o, n in calls), flush=True)
            tiles += [im for im, c in zip(drawn.images, cells, strict=True) if c][:10]
            labels.append(f"{name} {obj}")
    save_atomic(grid(tiles, cols=10, scale=2, row_labels=labels), a.out)


if __name__ == "__main__":
    main()
