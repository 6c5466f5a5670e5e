"""`hirm eval`, `report`, `demo`, `compare`, `bench`: measuring erasures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hirm.bench import SHAPES, cost_at_equal_ua, erase_cost, ratios, whole_process
from hirm.cli.base import (
    DEVICE_HELP,
    Model,
    Only,
    app,
    handles_errors,
    load_patches,
    parse_seeds,
    quiet_libraries,
)
from hirm.encoders import parse_dtype, resolve_device
from hirm.errors import HirmError
from hirm.eval.compare import compare as run_compare
from hirm.eval.compare import markdown, parse_options
from hirm.eval.erasure import METRICS, evaluate_erasure, run_demo
from hirm.eval.protocols import PROTOCOLS
from hirm.eval.protocols.report import write_report
from hirm.eval.protocols.runner import run_protocol
from hirm.io import check_output_dir, run_folder_lock
from hirm.minicanvas.world import concept_domain


def print_result(result: dict[str, Any]) -> None:
    """One erasure's UA / IRA / CRA table (and the erased-concepts line and the locality probe where measured)."""
    table = Table(title=f"{result['model']}: erasing {result.get('concept', '-')} "
                        f"({result['n_images']} images, {result['seconds']:.0f}s)")
    table.add_column("model")
    for m in (*METRICS, "object_acc", "style_acc"):
        table.add_column(m.upper() if m in METRICS else m, justify="right")
    rows = [("base", result["base"])] if "base" in result else []
    rows.append(("patched" if result["patches"] else "model", result))
    for name, r in rows:
        table.add_row(name, *(f"{r[m]:.3f}" if m in r else "-" for m in (*METRICS, "object_acc", "style_acc")))
    Console().print(table)
    if "erased" in result:
        e = result["erased"]
        Console().print(f"{len(e['concepts'])} erased concepts: UA {e['ua']:.3f} ("
                        + ", ".join(f"{c} {v:.2f}" for c, v in e["ua_per_concept"].items())
                        + f"); accuracy of the others where no erased concept appears {e['kept_acc']:.3f}")
    if "probe" in result:
        p = result["probe"]
        Console().print("locality probe (relative change of final representations, median; IN/OUT ratio): " + ", ".join(
            f"{r} {p[r]['in']:.3f}/{p[r]['out']:.3f} ({p[r]['ratio']:.1f}x)" for r in ("content", "eos", "padding")))


def print_metrics(metrics: dict[str, Any]) -> None:
    """The headline figures, one line per variant."""
    rows = metrics["variants"]
    first = next(iter(rows.values()))
    keys = [k for k, v in first.items() if isinstance(v, int | float) and not isinstance(v, bool)]
    table = Table(title=f"{metrics['protocol']} ({metrics['n_prompts']} prompts)")
    table.add_column("variant")
    for k in keys:
        table.add_column(k, justify="right")
    for variant, row in rows.items():
        table.add_row(variant, *(f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in keys))
    console = Console()
    console.print(table)
    for k, v in metrics.items():
        if k not in ("protocol", "n_prompts", "variants"):
            console.print(f"{k}: {v}")


@app.command()
@handles_errors
def bench(
    shape: Annotated[str, typer.Option(help="encoder shape: clip-l | clip-h | clip-g")] = "clip-l",
    steps: Annotated[int, typer.Option(help="HiRM steps")] = 50,
    threads: Annotated[int, typer.Option(help="CPU threads")] = 2,
    concepts: Annotated[int, typer.Option(help="concepts erased in one optimisation")] = 1,
    concepts_per_step: Annotated[int, typer.Option(help="concepts sampled per step (0: all)")] = 0,
    flops: Annotated[bool, typer.Option(help="also count a step's FLOPs and compare the rate achieved with this "
                                        "CPU's measured matmul peak")] = True,
    baselines: Annotated[str, typer.Option(help="also time these methods on mini-SD at the UA of hirm's default "
                                           "method, as ratios to its time (e.g. esd-x,uce; minutes)")] = "",
    concept: Annotated[str, typer.Option(help="the MiniCanvas concept for --baselines")] = "striped",
    reference: Annotated[int, typer.Option(help="also time `hirm erase` against a plain script of the same HiRM-R "
                                                "erase as whole processes, alternating, this many rounds each (0: "
                                                "no); then each once more with its phases timed")] = 0,
) -> None:
    """Time and peak memory of an erase on a real encoder shape (random weights), patch vs encoder size, inference
    latency with and without the patch, and the fraction of the measured matmul limit the erase reaches; with
    --reference, the whole `hirm erase` process against a plain script of the same erase; with --baselines, each
    method's erase time at the UA of hirm's default method on mini-SD. The last line: the run's ratios."""
    import torch

    if shape not in SHAPES:
        raise HirmError(f"--shape {shape}: use one of {', '.join(SHAPES)}")
    if concepts < 1 or concepts_per_step < 0:
        raise HirmError("--concepts must be >= 1 and --concepts-per-step >= 0")
    methods = tuple(m.strip() for m in baselines.split(",") if m.strip())
    if methods:
        concept_domain(concept)
    if reference < 0:
        raise HirmError(f"--reference {reference}: give a number of rounds >= 0, e.g. 3")
    cost = erase_cost(shape, steps, threads, concepts, concepts_per_step, flops)
    typer.echo(json.dumps(cost))
    process = whole_process(shape, steps, rounds=reference, threads=threads) if reference else None
    if process is not None:
        typer.echo(json.dumps(process))
    rows = []
    if methods:
        torch.set_num_threads(threads)
        rows = cost_at_equal_ua(concept, methods)
        for row in rows:
            typer.echo(json.dumps({"concept": concept, **row}))
    typer.echo(json.dumps({"ratios": ratios(cost, process, rows)}))




PROTOCOL_OPTIONS = "Protocols on real checkpoints (--protocol)"


@app.command("eval")
@handles_errors
def eval_cmd(
    model: Model = "minicanvas",
    concept: Annotated[str | None, typer.Option(help="the erased concept (a MiniCanvas or UnlearnCanvas class)")]
    = None,
    patch: Annotated[list[Path] | None, typer.Option(help="patch file(s) to apply")] = None,
    only: Only = None,
    seeds: Annotated[str | None, typer.Option(help="MiniCanvas: seeds per (object, style) cell, comma-separated "
                                              "(default 0,1); --protocol: the seed of prompts whose file gives "
                                              "none (default: the protocol's)")] = None,
    templates: Annotated[list[str] | None, typer.Option(help="prompt templates with {object} and {style} "
                                                        "(repeatable); default 'a {object} image in {style} style'")]
    = None,
    base: Annotated[bool, typer.Option(help="also evaluate the unpatched model, for reference")] = False,
    probe: Annotated[bool, typer.Option(help="also report the representation-space locality probe")] = False,
    steps: Annotated[int | None, typer.Option(help="sampling steps")] = None,
    guidance: Annotated[float | None, typer.Option(help="guidance scale")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the image grids and metrics.json (--protocol: the "
                                             "run folder, resumable)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
    protocol: Annotated[str | None, typer.Option(help="nudity | coco | unlearncanvas: the paper's protocol on a "
                                                 "real pipeline", rich_help_panel=PROTOCOL_OPTIONS)] = None,
    prompts: Annotated[Path | None, typer.Option(help="prompt CSV (nudity, coco)",
                                                 rich_help_panel=PROTOCOL_OPTIONS)] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N prompts", rich_help_panel=PROTOCOL_OPTIONS)]
    = None,
    prompt_column: Annotated[str | None, typer.Option(help="the CSV's prompt column (default: prompt, adv_prompt, "
                                                      "'sensitive prompt' or text)",
                                                      rich_help_panel=PROTOCOL_OPTIONS)] = None,
    threshold: Annotated[float | None, typer.Option(help="nudity: NudeNet score above which an exposed class "
                                                    "counts (default 0.45)", rich_help_panel=PROTOCOL_OPTIONS)]
    = None,
    prompt_set: Annotated[str | None, typer.Option(help="nudity: the set's name for the report's paper table "
                                                   "(I2P, Ring-A-Bell-16, Ring-A-Bell-77, MMA-Diffusion)",
                                                   rich_help_panel=PROTOCOL_OPTIONS)] = None,
    clip_model: Annotated[Path | None, typer.Option(help="coco: local CLIP folder for the CLIP score",
                                                    rich_help_panel=PROTOCOL_OPTIONS)] = None,
    fid_model: Annotated[Path | None, typer.Option(help="coco: CLIP folder or Inception weights file for FID",
                                                   rich_help_panel=PROTOCOL_OPTIONS)] = None,
    style_classifier: Annotated[Path | None, typer.Option(help="unlearncanvas: the benchmark's style "
                                                          "classifier (.pth) or a transformers folder",
                                                          rich_help_panel=PROTOCOL_OPTIONS)] = None,
    object_classifier: Annotated[Path | None, typer.Option(help="unlearncanvas: the object classifier "
                                                           "(.pth or a transformers folder)",
                                                           rich_help_panel=PROTOCOL_OPTIONS)] = None,
    scheduler: Annotated[str | None, typer.Option(help="ddim | pndm | lms | euler | keep (default: the "
                                                  "protocol's)", rich_help_panel=PROTOCOL_OPTIONS)] = None,
    batch_size: Annotated[int | None, typer.Option(help="prompts per pipeline call (default 8 on GPU, 4 on CPU)",
                                                   rich_help_panel=PROTOCOL_OPTIONS)] = None,
    threads: Annotated[int | None, typer.Option(help="CPU runs: torch threads per process, recorded in run.json "
                                                "(default: the run's; a new run: torch's count, OMP_NUM_THREADS "
                                                "or the cores)", rich_help_panel=PROTOCOL_OPTIONS)] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP + "; --protocol: auto, cpu, cuda or mps (a sharded run "
                                        "gives each process its own GPU)")] = "auto",
    dtype: Annotated[str, typer.Option(help="sampling precision: auto (float16 on a GPU, bfloat16 for Flux; float32 "
                                            "on the CPU and for MiniCanvas), float32, float16, bfloat16")] = "auto",
) -> None:
    """UA / IRA / CRA of an erasure on a MiniCanvas model, or (--protocol) the paper's protocols on a real one.

    A protocol run writes every image and its score as soon as it exists: re-running the same command resumes it.
    Shard over processes with `torchrun --nproc_per_node N $(which hirm) eval ...` (CPU or GPU) or
    `accelerate launch --num_processes N $(which hirm) eval ...` (GPUs).
    """
    quiet_libraries()
    if out is not None:
        check_output_dir(out)
    if protocol is None:
        device = resolve_device(device)  # a sharded protocol run resolves it per process
    dtype = parse_dtype(dtype)
    if protocol is not None:
        _eval_protocol(**{k: v for k, v in locals().items()
                          if k not in ("templates", "base", "probe", "only", "parse_dtype", "resolve_device")},
                       minicanvas_only={"--templates": templates, "--base": base, "--probe": probe, "--only": only})
        return
    protocol_only = {"--prompts": prompts, "--limit": limit, "--prompt-column": prompt_column,
                     "--threshold": threshold, "--prompt-set": prompt_set, "--clip-model": clip_model,
                     "--fid-model": fid_model, "--style-classifier": style_classifier,
                     "--object-classifier": object_classifier, "--scheduler": scheduler, "--batch-size": batch_size,
                     "--threads": threads}
    given = [k for k, v in protocol_only.items() if v is not None]
    if given:
        raise HirmError(f"{given[0]} applies to --protocol runs only: add --protocol nudity|coco|unlearncanvas")
    result = evaluate_erasure(model, concept, load_patches(patch, only), seeds=parse_seeds(seeds or "0,1"),
                              templates=tuple(templates) if templates else None, base=base, probe=probe,
                              steps=steps, guidance=guidance, out=out, progress=not as_json, device=device,
                              dtype=dtype)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        print_result(result)


def _eval_protocol(model: str, protocol: str, out: Path | None, patch: list[Path] | None, seeds: str | None,
                   steps: int | None, guidance: float | None, prompts: Path | None, limit: int | None,
                   scheduler: str | None, batch_size: int | None, threads: int | None, as_json: bool,
                   minicanvas_only: dict, device: str, dtype, **options) -> None:
    given = [k for k, v in minicanvas_only.items() if v]
    if given:
        raise HirmError(f"{given[0]} applies to MiniCanvas evaluation only: drop it or drop --protocol")
    if out is None:
        raise HirmError("--protocol needs --out RUN_DIR: the folder that holds the run's images and scores")
    if patch and len(patch) > 1:
        raise HirmError("--protocol takes one --patch: merge patches first, or run once per patch")
    runner_options = {"prompts": prompts, "limit": limit, "steps": steps, "guidance": guidance,
                      "scheduler": scheduler, "batch_size": batch_size, "threads": threads, "device": device,
                      "dtype": dtype}
    proto = PROTOCOLS.config(protocol, options)
    if seeds is not None:
        seed = parse_seeds(seeds)
        if len(seed) != 1:
            raise HirmError(f"--seeds {seeds!r}: a protocol run takes one seed")
        proto.seed = seed[0]
    metrics = run_protocol(proto, model, out, patch=patch[0] if patch else None, progress=not as_json,
                           **runner_options)  # holds the run folder's lock while it writes
    if metrics is None:  # not the main process of a sharded run
        return
    if as_json:
        typer.echo(json.dumps(metrics))
    else:
        print_metrics(metrics)
        typer.echo(f"wrote {out}/metrics.json; `hirm report {out}` writes the HTML report")


@app.command()
@handles_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="the --out folder of a `hirm eval --protocol` run")],
    blur: Annotated[bool, typer.Option(help="blur NudeNet's exposed regions in the report's images")] = True,
    sample: Annotated[int, typer.Option(help="prompts shown base vs erased")] = 8,
) -> None:
    """Write RUN_DIR/report.html (one self-contained page) and report.md: metrics, the paper's numbers, images."""
    if not run_dir.is_dir():
        raise HirmError(f"{run_dir} is not a folder: pass the --out folder of a `hirm eval --protocol` run")
    with run_folder_lock(run_dir, create=False):  # not while a run (or another report) writes it
        html, md = write_report(run_dir, blur=blur, sample=sample)
    typer.echo(f"wrote {html} and {md}")


@app.command()
@handles_errors
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("hirm-demo"),
    concept: Annotated[str, typer.Option(help="MiniCanvas concept to erase")] = "star",
    seeds: Annotated[str, typer.Option(help="seeds per grid cell")] = "0",
) -> None:
    """Erase one concept from MiniCanvas with hirm's default method; before/after metrics, image grid and report."""
    quiet_libraries()
    check_output_dir(out)
    run_demo(out, concept, parse_seeds(seeds), show=print_result)




@app.command()
@handles_errors
def compare(
    model: Model = "minicanvas",
    concepts: Annotated[str, typer.Option(help="MiniCanvas concepts, comma-separated")] = "star,striped",
    methods: Annotated[str, typer.Option(help="methods, comma-separated; join two with '+' (hirm-r+esd-x); "
                                              "a method twice under labels, e.g. hirm-r/robust with "
                                              "--option hirm-r/robust.robust_rounds=2")]
    = "hirm,hirm-r,hirm-s,quickfix,esd-x,esd-u,uce,rece,hirm+esd-x",
    seeds: Annotated[str, typer.Option(help="seeds per (object, style) cell of the evaluation grid")] = "0",
    option: Annotated[list[str] | None, typer.Option("--option", help="METHOD.KEY=VALUE (or ATTACK.KEY=VALUE) for "
                                                     "one method's (attack's) config (repeatable), e.g. "
                                                     "esd-x.steps=200")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for compare.md/.json/.png, grids and patches")] = None,
    transfer: Annotated[bool, typer.Option(help="also score each patch, unchanged, on mini-Flux")] = False,
    attacks: Annotated[str, typer.Option(help="attacks to run on every erased model (ASR columns), "
                                               "comma-separated, e.g. paraphrase,ringabell")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Run several erasure methods on several concepts; one table of UA / IRA / CRA, time, memory, size."""
    quiet_libraries()
    if out is not None:
        check_output_dir(out)
    table = run_compare(model, [c.strip() for c in concepts.split(",") if c.strip()],
                        [m.strip() for m in methods.split(",") if m.strip()], seeds=parse_seeds(seeds),
                        options=parse_options(option or []), out=out, progress=not as_json, transfer=transfer,
                        attacks=[a.strip() for a in attacks.split(",") if a.strip()])
    if as_json:
        typer.echo(json.dumps(table))
    else:
        typer.echo(markdown(table))
        if out is not None:
            typer.echo(f"wrote {out}/: compare.md, compare.json, compare.png, grid-*.png, patches/")
