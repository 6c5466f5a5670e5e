"""Time and peak memory of `hirm erase` (HiRM-R, 50 steps) on real text-encoder shapes; patch size vs encoder.

    python benchmarks/erase_cost.py [--shapes clip-l,clip-g] [--steps 50] [--threads 2]
"""

import argparse
import json

from hirm.bench import SHAPES, erase_cost

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="clip-l")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    for shape in a.shapes.split(","):
        if shape not in SHAPES:
            raise SystemExit(f"unknown shape {shape}; known: {', '.join(SHAPES)}")
        print(json.dumps(erase_cost(shape, a.steps, a.threads)))
