"""Cost of erasure on real encoder shapes (random weights: the cost depends on shape only).

Each measurement runs in a fresh process, so its peak memory is its own.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from contextlib import nullcontext
from typing import Any

from hirm import api
from hirm.encoders import TextEncoder, load_pipeline
from hirm.erase import METHODS, method_parts
from hirm.errors import HirmError
from hirm.eval.erasure import evaluate_erasure
from hirm.minicanvas import registry
from hirm.minicanvas.tokenizer import load_tokenizer

# Text-encoder shapes of the real pipelines (hidden, layers, heads, intermediate, projection)
SHAPES: dict[str, dict[str, int]] = {
    "clip-l": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "clip-g": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 20, "intermediate_size": 5120},
    "clip-h": {"hidden_size": 1024, "num_hidden_layers": 23, "num_attention_heads": 16, "intermediate_size": 4096},
}


def _measure(shape: str, steps: int, threads: int, concepts: int, concepts_per_step: int, flops: bool,
             queue: mp.Queue) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.set_num_threads(threads)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, **SHAPES[shape])
    model = CLIPTextModel(cfg).eval()
    encoder = TextEncoder("text_encoder", model, load_tokenizer())
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    names = ["Van Gogh"] if concepts == 1 else [f"concept number {i}" for i in range(concepts)]
    # the paper's HiRM-R: what its step costs on an encoder of this shape
    patch = api.erase([encoder], names, method="hirm-r", steps=steps, concepts_per_step=concepts_per_step,
                       progress=False)
    total = time.perf_counter() - start
    flops_per_step = _flops_per_step(encoder, names, concepts_per_step) if flops else None
    latency = _latencies_ms(encoder, patch)  # the patch replaces tensors in place: nothing is added to inference
    encoder_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    result = {
        "shape": shape,
        "steps": steps,
        "threads": threads,
        "concepts": concepts,
        "concepts_per_step": concepts_per_step or concepts,
        "erase_seconds": round(total, 2),
        "train_seconds": round(patch.seconds["text_encoder"], 2),
        "seconds_per_step": round(patch.seconds["text_encoder"] / steps, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "model_rss_mb": round((rss_model - rss_start) / 1024, 1),
        "patch_mb": round(patch.nbytes / 1e6, 2),
        "encoder_mb": round(encoder_bytes / 1e6, 2),
        "patch_fraction": round(patch.nbytes / encoder_bytes, 4),
        "encode_ms_base": latency["base"],
        "encode_ms_patched": latency["patched"],
    }
    if flops_per_step is not None:
        peak = _matmul_peak_flops()
        achieved = flops_per_step * steps / patch.seconds["text_encoder"]
        result.update({"gflop_per_step": round(flops_per_step / 1e9, 2),
                       "achieved_gflops": round(achieved / 1e9, 1),
                       "matmul_peak_gflops": round(peak / 1e9, 1),
                       "matmul_limit_fraction": round(achieved / peak, 3)})
    queue.put(result)


def _flops_per_step(encoder, names: list[str], concepts_per_step: int) -> int:
    """FLOPs of one optimisation step (forward and backward), counted by torch's FlopCounterMode as the difference
    between a 2-step and a 1-step erase, so set-up work (targets, starting representations) cancels out."""
    from torch.utils.flop_counter import FlopCounterMode

    totals = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            api.erase([encoder], names, method="hirm-r", steps=steps, concepts_per_step=concepts_per_step,
                       progress=False)
        totals.append(counter.get_total_flops())
    return totals[1] - totals[0]


def _matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """This CPU's measured fp32 matmul rate at the process's thread count (best of `repeats`): the hardware
    limit an erase step, made of matmuls, is compared against."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _latencies_ms(encoder, patch, repeats: int = 15) -> dict[str, float]:
    """Median wall time of encoding one 77-token prompt without and with `patch`, in ms. The two are measured
    in alternating rounds (base, patched, patched, base, ...) so that drift in this CPU's speed cancels."""
    import statistics

    import torch

    ids = encoder.tokenize(["a painting of a starry night over a village"])
    times: dict[str, list[float]] = {"base": [], "patched": []}
    with torch.no_grad():
        encoder.model(input_ids=ids)  # warm-up
        for i in range(2 * repeats):
            which = "patched" if i % 4 in (1, 2) else "base"
            with patch.applied([encoder]) if which == "patched" else nullcontext():
                start = time.perf_counter()
                encoder.model(input_ids=ids)
                times[which].append(time.perf_counter() - start)
    return {k: round(1000 * statistics.median(v), 2) for k, v in times.items()}


def erase_cost(shape: str = "clip-l", steps: int = 50, threads: int = 2, concepts: int = 1,
               concepts_per_step: int = 0, flops: bool = True) -> dict[str, Any]:
    """Time and peak memory of a default HiRM-R erase of `concepts` concepts (one optimisation, `concepts_per_step`
    of them per step; 0: all) on an encoder of `shape`, in a fresh process; with `flops`, also the FLOPs of a step,
    the rate achieved, this CPU's measured matmul peak and the fraction of it (measured after the timed erase)."""
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(shape, steps, threads, concepts, concepts_per_step, flops, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


# steps doubling until a trained method's UA reaches HiRM-R's
BUDGETS = (25, 50, 100, 200, 400, 800)
# where ESD's paper defaults (lr 1e-5, 50 DDIM steps) do not fit MiniCanvas: the overrides of docs/baselines.md
MINICANVAS_OVERRIDES: dict[str, dict[str, Any]] = {"esd-x": {"lr": 1e-4, "ddim_steps": 25},
                                                   "esd-u": {"lr": 1e-4, "ddim_steps": 25}}


def cost_at_equal_ua(concept: str = "striped", methods: tuple[str, ...] = ("esd-x", "uce"),
                     seeds: tuple[int, ...] = (0,), budgets: tuple[int, ...] = BUDGETS) -> list[dict[str, Any]]:
    """Erase wall time of each method at HiRM-R's UA on mini-SD, as a ratio to HiRM-R's (hirm's MiniCanvas
    recipe), all in this process. A trained method runs from the base model at doubling step budgets until its UA
    reaches HiRM-R's (its time is that run's); a closed-form one (no `steps`) has no budget: its one edit is
    timed and its UA stands next to HiRM-R's. Rows: method, steps, seconds, ratio, ua, ira, cra, reached."""
    import dataclasses

    pipe = load_pipeline("minicanvas")
    classifier = registry.load_classifier()

    def run(method: str, **overrides: Any) -> dict[str, Any]:
        start = time.perf_counter()
        patch = api.erase(pipe, concept, method=method, progress=False, **overrides)
        seconds = time.perf_counter() - start
        scores = evaluate_erasure("minicanvas", concept, [patch], seeds=seeds, pipe=pipe, classifier=classifier,
                                  progress=False)
        return {"seconds": seconds, **{k: round(scores[k], 4) for k in ("ua", "ira", "cra")}}

    reference = run("hirm-r")
    rows = [{"method": "hirm-r", "steps": None, **reference, "ratio": 1.0, "reached": True}]
    for method in methods:
        if len(method_parts(method)) > 1:  # also a clear error for an unknown name
            raise HirmError(f"{method}: time single methods against HiRM-R, e.g. esd-x,uce")
        overrides = MINICANVAS_OVERRIDES.get(method, {})
        trained = "steps" in {f.name for f in dataclasses.fields(METHODS[method].config_cls)}
        for steps in budgets if trained else (None,):
            result = run(method, **overrides, **({"steps": steps} if trained else {}))
            if result["ua"] >= reference["ua"]:
                break
        rows.append({"method": method, "steps": steps, **result, "ratio": result["seconds"] / reference["seconds"],
                     "reached": result["ua"] >= reference["ua"]})
    return [{**r, "seconds": round(r["seconds"], 2), "ratio": round(r["ratio"], 2)} for r in rows]
