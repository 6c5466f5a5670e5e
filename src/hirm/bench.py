"""Cost of erasure on real encoder shapes (random weights: the cost depends on shape only).

Each measurement runs in a fresh process, so its peak memory is its own.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time
from contextlib import nullcontext
from pathlib import Path
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


def _random_clip(shape: str):
    """A CLIP text encoder of `shape` (SHAPES) with seeded random weights, in eval mode: the cost of an erase
    depends on the shape only."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, **SHAPES[shape])
    return CLIPTextModel(cfg).eval()


def _measure(shape: str, steps: int, threads: int, concepts: int, concepts_per_step: int, flops: bool,
             queue: mp.Queue) -> None:
    import torch

    torch.set_num_threads(threads)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = _random_clip(shape)
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
                     seeds: tuple[int, ...] = (0,), budgets: tuple[int, ...] = BUDGETS,
                     reference: str = "hirm") -> list[dict[str, Any]]:
    """Erase wall time of each method at `reference`'s UA on mini-SD (default: hirm's default method), as a ratio
    to `reference`'s time, all in this process. A trained method runs from the base model at doubling step budgets
    until its UA reaches the reference's (its time is that run's); a closed-form one (no `steps`) has no budget:
    its one edit is timed and its UA stands next to the reference's. Rows: method, steps, seconds, ratio, ua, ira,
    cra, reached; the reference first."""
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

    for method in methods:
        if len(method_parts(method)) > 1:  # also a clear error for an unknown name
            raise HirmError(f"{method}: time single methods against {reference}, e.g. esd-x,uce")
    base = run(reference)
    rows = [{"method": reference, "steps": None, **base, "ratio": 1.0, "reached": True}]
    for method in methods:
        overrides = MINICANVAS_OVERRIDES.get(method, {})
        trained = "steps" in {f.name for f in dataclasses.fields(METHODS[method].config_cls)}
        for steps in budgets if trained else (None,):
            result = run(method, **overrides, **({"steps": steps} if trained else {}))
            if result["ua"] >= base["ua"]:
                break
        rows.append({"method": method, "steps": steps, **result, "ratio": result["seconds"] / base["seconds"],
                     "reached": result["ua"] >= base["ua"]})
    return [{**r, "seconds": round(r["seconds"], 2), "ratio": round(r["ratio"], 3)} for r in rows]


def ratios(cost: dict[str, Any], process: dict[str, Any] | None, equal_ua: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of one `hirm bench` run as the ratios its goals are stated in: hirm's time over each other
    method's at equal UA (a closed form's at its own UA), over the plain script's as a whole process, and the step's
    fraction of this host's measured matmul peak."""
    out: dict[str, Any] = {}
    if "matmul_limit_fraction" in cost:
        out |= {"step_of_matmul_peak": cost["matmul_limit_fraction"], "matmul_peak_gflops": cost["matmul_peak_gflops"]}
    if process is not None:
        out["hirm_process_over_plain_script"] = process["hirm_over_plain"]
    for row in equal_ua[1:]:
        key = f"{equal_ua[0]['method']}_over_{row['method']}" + ("_at_equal_ua" if row["reached"] else "")
        out[key] = round(equal_ua[0]["seconds"] / row["seconds"], 2) if row["seconds"] else None
    return out


# The plain reference of `whole_process`: the paper's HiRM-R written as a short script with nothing skipped and
# nothing added (no fingerprints, no checks): import, load the tokenizer and text encoder from the pipeline folder,
# 50 AdamW steps on layer 0's attention with the last layer's attention output (a forward hook) pulled toward a
# random target, save the trained tensors. Arguments: folder, output file, steps; it prints its phase times.
PLAIN_REFERENCE = '''
import json, sys, time
start = time.perf_counter()
import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer
folder, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = {"import": time.perf_counter() - start}
tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
model = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
t["load"] = time.perf_counter() - start - sum(t.values())
model.requires_grad_(False)
layers = model.encoder.layers if hasattr(model, "encoder") else model.text_model.encoder.layers
trained = [p for p in layers[0].self_attn.parameters()]
for p in trained:
    p.requires_grad_(True)
seen = {}
layers[-1].self_attn.out_proj.register_forward_hook(lambda m, i, o: seen.update(out=o))
ids = tokenizer(["Van Gogh"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
torch.manual_seed(42)
with torch.no_grad():
    model(input_ids=ids)
    target = torch.randn_like(seen["out"])
    target *= 5000.0 * (seen["out"].numel() / (77 * 768)) ** 0.5 / target.norm()
optimizer = torch.optim.AdamW(trained, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-8)
for _ in range(steps):
    model(input_ids=ids)
    loss = torch.nn.functional.mse_loss(seen["out"], target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
t["steps"] = time.perf_counter() - start - sum(t.values())
save_file({n: p.detach().contiguous() for n, p in layers[0].self_attn.named_parameters()}, out)
t["save"] = time.perf_counter() - start - sum(t.values())
print(json.dumps(t))
'''

# hirm's phases in one process, as `hirm erase --method hirm-r` runs them (start-up = importing the command line)
HIRM_PHASES = '''
import json, sys, time
start = time.perf_counter()
import hirm.cli
import torch
from hirm import api
from hirm.encoders import load_text_encoders
from hirm.patch import fingerprint
folder, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = {"import": time.perf_counter() - start}
encoders = load_text_encoders(folder)
t["load"] = time.perf_counter() - start - sum(t.values())
mark = time.perf_counter()
for dtype in (torch.float16, torch.bfloat16):  # what the patch records; kept, so the erase does not hash again
    fingerprint(encoders[0].model, dtype)
t["fingerprints"] = time.perf_counter() - mark
mark = time.perf_counter()
patch = api.erase(encoders, "Van Gogh", method="hirm-r", steps=steps, progress=False)
t["erase"] = time.perf_counter() - mark
t["of which steps"] = patch.seconds["text_encoder"]
mark = time.perf_counter()
patch.save(out)
t["save"] = time.perf_counter() - mark
print(json.dumps(t))
'''


def _clip_pipeline_folder(shape: str, root: Path) -> Path:
    """A pipeline folder with a text encoder of `shape` (random weights) and the CLIP tokenizer, made once."""
    folder = root / f"{shape}-pipeline"
    if (folder / "model_index.json").exists():
        return folder
    _random_clip(shape).save_pretrained(folder / "text_encoder")
    load_tokenizer().save_pretrained(folder / "tokenizer")
    index = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def whole_process(shape: str = "clip-l", steps: int = 50, rounds: int = 3, threads: int = 2,
                  workdir: Path | None = None) -> dict[str, Any]:
    """`hirm erase --method hirm-r` against the plain reference script (`PLAIN_REFERENCE`), each timed as a whole
    process (interpreter start to exit) on the same pipeline folder, alternating (reference first in odd rounds,
    hirm first in even ones) so that drift in the CPU's speed falls on both; then one process of each with its
    phases timed. Returns the wall times, their medians and ratio, and both breakdowns."""
    import os
    import statistics
    import subprocess
    import sys
    import tempfile

    root = Path(workdir or tempfile.mkdtemp(prefix="hirm-bench-"))
    folder = _clip_pipeline_folder(shape, root)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    hirm_exe = str(Path(sys.executable).with_name("hirm"))
    commands = {
        "plain": [sys.executable, "-c", PLAIN_REFERENCE, str(folder), str(root / "plain.safetensors"), str(steps)],
        "hirm": [hirm_exe, "--quiet", "erase", "--model", str(folder), "--concept", "Van Gogh", "--method", "hirm-r",
                 "--steps", str(steps), "--out", str(root / "hirm.safetensors")],
    }

    def timed(name: str, command: list[str]) -> tuple[float, str]:
        (root / f"{name}.safetensors").unlink(missing_ok=True)
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise HirmError(f"the {name} process failed (exit {done.returncode}): {last}")
        return time.perf_counter() - start, done.stdout

    walls: dict[str, list[float]] = {"plain": [], "hirm": []}
    for r in range(rounds):
        for name in ("plain", "hirm") if r % 2 == 0 else ("hirm", "plain"):
            walls[name].append(round(timed(name, commands[name])[0], 2))
    phases = {}
    for name, script in (("plain", PLAIN_REFERENCE), ("hirm", HIRM_PHASES)):
        out = timed(name, [sys.executable, "-c", script, str(folder), str(root / f"{name}.safetensors"), str(steps)])[1]
        phases[name] = {k: round(v, 2) for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    median = {k: statistics.median(v) for k, v in walls.items()}
    return {"shape": shape, "steps": steps, "threads": threads, "rounds": rounds, "wall_seconds": walls,
            "median_seconds": median, "hirm_over_plain": round(median["hirm"] / median["plain"], 3),
            "phases": phases}
