"""The `hirm` command line: erase, apply, generate, inspect (and the MiniCanvas commands)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from hirm.errors import HirmError
from hirm.io import check_output_dir, check_output_file

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Erase concepts from text-to-image diffusion models (HiRM) as small safety patches.")

Model = Annotated[str, typer.Option("--model", "-m", help="diffusers pipeline folder, text-encoder folder, "
                                    "cached hub id, or 'minicanvas'")]
DEVICE_HELP = "auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps"
Device = Annotated[str, typer.Option(help=DEVICE_HELP)]


_DEBUG = {"on": False}
# commands whose outputs are kept and resumed when interrupted (the others write one file at the very end)
_RESUMABLE = {"eval_cmd", "compare", "attack", "demo", "report", "minicanvas_train"}


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", help="on a failure, also print the traceback")]
             = False) -> None:
    _DEBUG["on"] = debug or os.environ.get("HIRM_DEBUG", "") not in ("", "0")


def one_line(message: str) -> str:
    """`message` on one line with control characters escaped: messages quote file contents, which must not
    move the cursor or recolour the terminal."""
    return "".join(c if c.isprintable() else " " if c in "\r\n\t" else f"\\x{ord(c):02x}" for c in message)


def _fail(message: str, code: int = 2) -> None:
    if _DEBUG["on"]:
        import traceback

        traceback.print_exc()
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def handles_errors(fn):
    """One-line message and exit 2 for every documented failure (HirmError, and the OSErrors of reading input),
    130 on Ctrl-C and 143 on SIGTERM at any moment; `--debug` adds the traceback. Outputs are written atomically,
    so an interrupted command leaves no half-written file."""
    from hirm._signals import EXIT_INTERRUPTED, EXIT_TERMINATED, during_command
    from hirm.errors import Terminated

    kept = ("; finished files are kept and none is half-written: re-run the same command to resume"
            if fn.__name__ in _RESUMABLE else "; nothing was written")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with during_command():
                return fn(*args, **kwargs)
        except HirmError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted" + kept, code=EXIT_INTERRUPTED)
        except Terminated:
            _fail("terminated" + kept, code=EXIT_TERMINATED)
        except OSError as e:
            from hirm.io import write_error

            if e.errno in (28, 122):  # ENOSPC, EDQUOT
                _fail(str(write_error(e.filename or "a file", e)))
            _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))

    return wrapper


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


@app.command()
@handles_errors
def erase(
    model: Model,
    out: Annotated[Path, typer.Option(help="patch file to write (.safetensors)")],
    concept: Annotated[list[str] | None, typer.Option(help="the concept to erase, e.g. 'Van Gogh' (repeatable: "
                                                      "hirm, hirm-r/-s erase several in one optimisation)")] = None,
    concepts_file: Annotated[Path | None, typer.Option(help="text file with one concept per line (# comments)")] = None,
    method: Annotated[str, typer.Option(help="erasure method (see `hirm methods`)")] = "hirm",
    target: Annotated[str | None, typer.Option(help="what the concept becomes: hirm, the words put in its place "
                                                    "in every prompt, e.g. 'hexagon'; hirm-s, a semantic target "
                                                    "prompt, e.g. 'a painting'")] = None,
    kind: Annotated[str | None, typer.Option(help="object | style | nudity: the paper's steps/lr for it")] = None,
    encoder: Annotated[str, typer.Option(help="text encoder(s) to edit: clip (every CLIP encoder), all (T5 too), "
                                              "or a component name: text_encoder, text_encoder_2, ...")] = "clip",
    steps: Annotated[int | None, typer.Option(help="optimisation steps")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the random target and the optimisation")] = None,
    layers: Annotated[str | None, typer.Option(help="trained layers: 0 | 0,1 | first-attn | mlp-only | attn-only "
                                               "| final-attn | mix-attn | all")] = None,
    target_norm: Annotated[float | None, typer.Option(help="hirm-r target norm (on a 77x768 encoder)")] = None,
    scale: Annotated[float | None, typer.Option(help="hirm-s: multiplier c of the semantic target")] = None,
    supervise_layer: Annotated[int | None, typer.Option(help="layer whose output is supervised (-1: last)")] = None,
    supervise_module: Annotated[str | None, typer.Option(help="module in that layer (self_attn.out_proj, "
                                                         "mlp.fc2, output), or final: the final hidden "
                                                         "states (hirm's default)")] = None,
    template: Annotated[list[str] | None, typer.Option(help="prompt template with {} (repeatable)")] = None,
    variant: Annotated[list[str] | None, typer.Option(help="other names of the concept (repeatable)")] = None,
    truncate: Annotated[bool, typer.Option(help="cut prompts longer than the encoder instead of failing")] = False,
    positions: Annotated[str | None, typer.Option(help="supervised positions: all (paper) | no-bos | concept | "
                                                  "concept+eos")] = None,
    train_biases: Annotated[bool | None, typer.Option("--train-biases/--no-train-biases",
                                                      help="train layer biases too (paper: yes)")] = None,
    retain_weight: Annotated[float | None, typer.Option(help="weight of the retain term (paper: 0)")] = None,
    retain_prompt: Annotated[list[str] | None, typer.Option(help="prompt whose final representation must stay "
                                                            "(repeatable)")] = None,
    preserve: Annotated[list[str] | None, typer.Option(help="a concept or prompt to keep as it is, e.g. 'a cat' "
                                                       "(repeatable; hirm-r/-s, uce, rece)")] = None,
    preserve_file: Annotated[Path | None, typer.Option(help="text file with one concept or prompt to keep per "
                                                       "line (# comments)")] = None,
    safe_pair: Annotated[list[str] | None, typer.Option(help="hirm-s safe direction: 'WITH CONCEPT|WITHOUT' "
                                                        "prompt pair (repeatable)")] = None,
    paper_defaults: Annotated[bool, typer.Option(help="the paper's recipe exactly, ignoring hirm's defaults for "
                                                 "this model")] = False,
    robust: Annotated[bool, typer.Option(help="robust HiRM: rounds of attack (prompts that bring the concept back "
                                         "through the erased encoder), then erase again with them; typos and "
                                         "known synonyms too")] = False,
    option: Annotated[list[str] | None, typer.Option("--set", help="any config field of the method, KEY=VALUE "
                                                     "(JSON values), e.g. --set preserve='[\"circle\"]'; "
                                                     "for one part of a+b: --set esd-x.steps=200")] = None,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="precision the model is read in: auto (float32), float32, float16 "
                                            "(reads fp16 variant files), bfloat16; the trained weights are always "
                                            "float32 copies, and the patch applies to float16/float32 loads (and "
                                            "bfloat16 ones)")] = "auto",
) -> None:
    """Erase a concept; write its safety patch."""
    _quiet_libraries()
    from hirm.api import erase as run_erase
    from hirm.encoders import parse_dtype, resolve_device
    from hirm.erase.hirm import ROBUST_ROUNDS
    from hirm.eval.compare import parse_assignment

    pairs = None
    if safe_pair:
        if not all(p.count("|") == 1 for p in safe_pair):
            raise HirmError("--safe-pair takes 'PROMPT WITH CONCEPT|SAME PROMPT WITHOUT IT' (one '|')")
        pairs = tuple(tuple(x.strip() for x in p.split("|")) for p in safe_pair)
    if out.suffix != ".safetensors":
        raise HirmError(f"--out {out}: patches are safetensors files; use a name ending in .safetensors")
    check_output_file(out)  # before minutes of training, not after
    where, read_as = resolve_device(device), parse_dtype(dtype)  # a device this machine lacks: before loading
    concepts = list(concept or []) + (_read_lines(concepts_file, "--concepts-file") if concepts_file else [])
    if not concepts:
        raise HirmError("no concept given: pass --concept 'Van Gogh' (repeatable) or --concepts-file FILE")
    settings = dict(parse_assignment(o) for o in option or [])
    kept = list(preserve or []) + (_read_lines(preserve_file, "--preserve-file") if preserve_file else [])
    if kept:
        settings["preserve"] = tuple(dict.fromkeys(kept))
    if robust:
        if not method.startswith("hirm-") or "+" in method:
            raise HirmError(f"--robust is a HiRM option; {method} has its own defences (e.g. advunlearn)")
        settings.setdefault("robust_rounds", ROBUST_ROUNDS)
    patch = run_erase(
        model, concepts if len(concepts) > 1 else concepts[0], method=method, encoder=encoder, kind=kind,
        paper_defaults=paper_defaults, target=target,
        steps=steps, lr=lr, seed=seed, layers=layers, target_norm=target_norm, scale=scale,
        supervise_layer=supervise_layer, supervise_module=supervise_module,
        templates=tuple(template) if template else None, variants=tuple(variant) if variant else None,
        truncate=truncate or None, positions=positions, train_biases=train_biases, retain_weight=retain_weight,
        retain_prompts=tuple(retain_prompt) if retain_prompt else None, safe_pairs=pairs, device=where,
        dtype=read_as, **settings,
    )
    patch.save(out)
    for name, seconds in patch.seconds.items():
        i = patch.info.get(name, {})
        detail = (f", loss {i['loss_first']:.4g} -> {i['loss_last']:.4g}" if "loss_first" in i else "") + (
            f", cosine to target {i['cos_to_target_before']:.3f} -> {i['cos_to_target_after']:.3f}"
            if "cos_to_target_after" in i else "")
        typer.echo(f"{name}: {seconds:.2f}s{detail}")
    typer.echo(f"wrote {out} ({patch.nbytes / 1e6:.2f} MB, {len(patch.tensors)} tensors, id {patch.id})")


def _read_lines(path: Path, option: str) -> list[str]:
    """The non-empty lines of a list file, `#` comments dropped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise HirmError(f"{option} {path}: cannot read it ({e.strerror})") from None
    except UnicodeDecodeError:
        raise HirmError(f"{option} {path}: not a UTF-8 text file") from None
    entries = [line.split("#", 1)[0].strip() for line in lines]
    if not any(entries):
        raise HirmError(f"{option} {path}: nothing in it (one entry per line)")
    return [e for e in entries if e]


@app.command()
@handles_errors
def apply(
    model: Model,
    patch: Annotated[list[Path], typer.Option(help="patch file(s), applied in order")],
    out: Annotated[Path, typer.Option(help="folder to save the patched pipeline to")],
    device: Annotated[str, typer.Option(help="where the pipeline is loaded to be patched (cpu: nothing is "
                                        "computed); " + DEVICE_HELP)] = "cpu",
    dtype: Annotated[str, typer.Option(help="precision the pipeline is loaded and saved in: auto (as its text "
                                            "encoder is stored), float32, float16, bfloat16")] = "auto",
) -> None:
    """Apply patch(es) to a pipeline and save the result (save_pretrained)."""
    _quiet_libraries()
    from hirm.encoders import load_pipeline, parse_dtype, resolve_device, stored_dtype
    from hirm.patch import Patch
    from hirm.saving import save_pretrained_atomic

    check_output_dir(out, empty=True)
    where, wanted = resolve_device(device), parse_dtype(dtype)
    patches = [Patch.load(p) for p in patch]
    pipe = load_pipeline(model, dtype=wanted or stored_dtype(model), device=where)
    for p in patches:
        p.apply(pipe)
    save_pretrained_atomic(pipe, out)
    typer.echo(f"saved patched pipeline to {out} ({', '.join(str(p) for p in patch)})")


@app.command()
@handles_errors
def generate(
    model: Model,
    prompt: Annotated[str, typer.Option(help="text prompt")],
    out: Annotated[Path, typer.Option(help="image grid to write (.png)")],
    patch: Annotated[list[Path] | None, typer.Option(help="patch file(s) to apply first")] = None,
    seed: Annotated[int, typer.Option(help="seed of image 0; image i uses seed + i")] = 0,
    n: Annotated[int, typer.Option("-n", "--num-images", help="number of images")] = 4,
    steps: Annotated[int | None, typer.Option(help="sampling steps (pipeline default if unset)")] = None,
    guidance: Annotated[float | None, typer.Option(help="classifier-free guidance scale")] = None,
    compare: Annotated[bool, typer.Option(help="with --patch: top row unpatched, bottom row patched")] = False,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="sampling precision: auto (float16 on a GPU, bfloat16 for Flux; "
                                            "float32 on the CPU and for MiniCanvas), float32, float16, bfloat16")]
    = "auto",
) -> None:
    """Generate images, optionally with patches applied; save a grid."""
    _quiet_libraries()
    from hirm.encoders import load_pipeline, parse_dtype, resolve_device
    from hirm.generate import sample
    from hirm.images import grid, save_atomic
    from hirm.minicanvas import registry
    from hirm.patch import Patch

    if n < 1:
        raise HirmError(f"-n {n}: need at least one image")
    from hirm.images import image_format

    image_format(out)
    check_output_file(out)
    where, wanted = resolve_device(device), parse_dtype(dtype)
    patches = [Patch.load(p) for p in patch or []]
    pipe = load_pipeline(model, dtype=wanted, device=where)
    # a MiniCanvas model (by the family its text encoder declares): its own settings, not SD's 50 steps / CFG 7.5
    defaults = registry.SAMPLING if registry.is_minicanvas(getattr(pipe, "text_encoder", None)) else {}
    steps = steps or defaults.get("steps")
    guidance = guidance or defaults.get("guidance")
    images = []
    if compare and patches:
        images += sample(pipe, [prompt] * n, seed=seed, steps=steps, guidance=guidance)
    for p in patches:
        p.apply(pipe)
    images += sample(pipe, [prompt] * n, seed=seed, steps=steps, guidance=guidance)
    scale = max(1, 128 // images[0].size[0])
    save_atomic(grid(images, cols=n, scale=scale), out)
    typer.echo(f"wrote {out} ({len(images)} images)")


@app.command()
@handles_errors
def inspect(
    patch: Annotated[Path, typer.Argument(help="patch file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show what a patch holds: concept, method, encoders, fingerprints, size."""
    from hirm.patch import Patch

    p = Patch.load(patch)
    s = p.summary()
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    say = lambda text: typer.echo(one_line(text))  # noqa: E731 (the file's strings, control characters escaped)
    say(f"patch      {patch} (id {s['id']})")
    say(f"concepts   {', '.join(s['concepts'])}")
    say(f"method     {s['method']}")
    for c, v in s["components"].items():
        say(f"component  {c}: {v['tensors']} tensors, base fingerprint {v['fingerprint'][:16]}")
    say(f"size       {s['bytes'] / 1e6:.2f} MB ({', '.join(s['dtype'])})")
    configs = s["config"] if "+" in s["method"] else {s["method"]: s["config"]}
    for name, cfg in configs.items():  # scalar options only; --json has everything
        if isinstance(cfg, dict):
            shown = ", ".join(f"{k}={v}" for k, v in cfg.items() if v is None or isinstance(v, int | float | str))
            say(f"config     {name}: {shown}")
    keys = ("loss_first", "loss_last", "cos_to_target_before", "cos_to_target_after")
    for c, i in s["info"].items():
        if isinstance(i, dict) and all(isinstance(i.get(k), int | float) for k in keys):
            say(f"trained    {c}: loss {i['loss_first']:.4g} -> {i['loss_last']:.4g}, cosine to target "
                f"{i['cos_to_target_before']:.3f} -> {i['cos_to_target_after']:.3f}")


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
    baselines: Annotated[str, typer.Option(help="also time these methods on mini-SD at HiRM-R's UA, as ratios to "
                                           "HiRM-R (e.g. esd-x,uce; minutes)")] = "",
    concept: Annotated[str, typer.Option(help="the MiniCanvas concept for --baselines")] = "striped",
) -> None:
    """Time and peak memory of an erase on a real encoder shape (random weights), patch vs encoder size, inference
    latency with and without the patch, and the fraction of the measured matmul limit the erase reaches; with
    --baselines, each method's erase time at HiRM-R's UA on mini-SD, as a ratio to HiRM-R's."""
    import torch

    from hirm.bench import SHAPES, cost_at_equal_ua, erase_cost
    from hirm.minicanvas.world import concept_domain

    if shape not in SHAPES:
        raise HirmError(f"--shape {shape}: use one of {', '.join(SHAPES)}")
    if concepts < 1 or concepts_per_step < 0:
        raise HirmError("--concepts must be >= 1 and --concepts-per-step >= 0")
    methods = tuple(m.strip() for m in baselines.split(",") if m.strip())
    if methods:
        concept_domain(concept)
    r = erase_cost(shape, steps, threads, concepts, concepts_per_step, flops)
    typer.echo(json.dumps(r))
    if methods:
        torch.set_num_threads(threads)
        for row in cost_at_equal_ua(concept, methods):
            typer.echo(json.dumps({"concept": concept, **row}))


def _load_patches(paths: list[Path] | None) -> list:
    from hirm.patch import Patch

    return [Patch.load(p) for p in paths or []]


def _parse_seeds(seeds: str) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise HirmError(f"--seeds {seeds!r}: give integers separated by commas, e.g. 0,1") from None
    if not out:
        raise HirmError("--seeds is empty: give at least one seed, e.g. 0")
    return out


PROTOCOL_OPTIONS = "Protocols on real checkpoints (--protocol)"


@app.command("eval")
@handles_errors
def eval_cmd(
    model: Model = "minicanvas",
    concept: Annotated[str | None, typer.Option(help="the erased concept (a MiniCanvas or UnlearnCanvas class)")]
    = None,
    patch: Annotated[list[Path] | None, typer.Option(help="patch file(s) to apply")] = None,
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
    _quiet_libraries()
    from hirm.encoders import parse_dtype, resolve_device

    if out is not None:
        check_output_dir(out)
    if protocol is None:
        device = resolve_device(device)  # a sharded protocol run resolves it per process
    dtype = parse_dtype(dtype)
    if protocol is not None:
        _eval_protocol(**{k: v for k, v in locals().items()
                          if k not in ("templates", "base", "probe", "parse_dtype", "resolve_device")},
                       minicanvas_only={"--templates": templates, "--base": base, "--probe": probe})
        return
    protocol_only = {"--prompts": prompts, "--limit": limit, "--prompt-column": prompt_column,
                     "--threshold": threshold, "--prompt-set": prompt_set, "--clip-model": clip_model,
                     "--fid-model": fid_model, "--style-classifier": style_classifier,
                     "--object-classifier": object_classifier, "--scheduler": scheduler, "--batch-size": batch_size,
                     "--threads": threads}
    given = [k for k, v in protocol_only.items() if v is not None]
    if given:
        raise HirmError(f"{given[0]} applies to --protocol runs only: add --protocol nudity|coco|unlearncanvas")
    from hirm.eval.report import evaluate_erasure

    result = evaluate_erasure(model, concept, _load_patches(patch), seeds=_parse_seeds(seeds or "0,1"),
                              templates=tuple(templates) if templates else None, base=base, probe=probe,
                              steps=steps, guidance=guidance, out=out, progress=not as_json, device=device,
                              dtype=dtype)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        from hirm.eval.report import print_result

        print_result(result)


def _eval_protocol(model: str, protocol: str, out: Path | None, patch: list[Path] | None, seeds: str | None,
                   steps: int | None, guidance: float | None, prompts: Path | None, limit: int | None,
                   scheduler: str | None, batch_size: int | None, threads: int | None, as_json: bool,
                   minicanvas_only: dict, device: str, dtype, **options) -> None:
    from hirm.eval.protocols import PROTOCOLS
    from hirm.eval.protocols.runner import run_protocol

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
        seed = _parse_seeds(seeds)
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
        from hirm.eval.protocols.runner import print_metrics

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
    from hirm.eval.protocols.report import write_report
    from hirm.io import run_folder_lock

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
    _quiet_libraries()
    check_output_dir(out)
    from hirm.eval.report import run_demo

    run_demo(out, concept, _parse_seeds(seeds))


minicanvas_app = typer.Typer(no_args_is_help=True, help="Build the embedded MiniCanvas world's models.")
app.add_typer(minicanvas_app, name="minicanvas")


@minicanvas_app.command("train")
@handles_errors
def minicanvas_train(
    what: Annotated[str, typer.Argument(help="classifier | vae | vae-decoder | text | unet | flux")],
    run_dir: Annotated[Path, typer.Option(help="checkpoint folder (resumes from it)")],
    steps: Annotated[int | None, typer.Option(help="total steps (default: the shipped models' count)")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads")] = 2,
    device: Annotated[str | None, typer.Option(help="unet / flux: e.g. cuda on a leased accelerator")] = None,
    workers: Annotated[int | None, typer.Option(help="unet / flux: processes rendering the training set")] = None,
    time_budget: Annotated[float | None, typer.Option(help="unet / flux: seconds; the schedule fits it")] = None,
    resume_state: Annotated[Path | None, typer.Option(
        help="unet / flux: a committed resume state a fresh --run-dir starts from (default: the checkout's "
             "training/minicanvas-sd-unet or training/minicanvas-flux, where it exists)")] = None,
    option: Annotated[list[str] | None, typer.Option("--set", help="any other argument of the trainer, "
                                                     "KEY=VALUE (JSON values), e.g. --set lr=1e-4")] = None,
) -> None:
    """Train (or resume) one MiniCanvas model; checkpoints in --run-dir."""
    import torch

    from hirm.eval.compare import parse_assignment
    from hirm.minicanvas import training

    trainer = training.TRAINERS.lookup(what)
    kwargs = dict(parse_assignment(o) for o in option or [])
    kwargs |= {k: v for k, v in (("steps", steps), ("device", device), ("workers", workers),
                                 ("time_budget", time_budget)) if v is not None}
    if what in training.RESUME_STATE:
        default = training.RESUME_STATE[what]
        kwargs["init_from"] = resume_state or (default if (default / "state.json").exists() else None)
    kwargs = training.TRAINERS.config(what, kwargs)
    torch.set_num_threads(threads)
    trainer.run(run_dir, **kwargs)


@minicanvas_app.command("build")
@handles_errors
def minicanvas_build(
    what: Annotated[str, typer.Argument(help="sd | flux")] = "sd",
    run_dir: Annotated[Path | None, typer.Option(help="the run to ship (its EMA weights); default runs/unet or "
                                                     "runs/flux")] = None,
    components: Annotated[Path, typer.Option(help="folder with vae/ and text_encoder/ (sd)")] = Path("runs/components"),
    resume_state: Annotated[Path | None, typer.Option(
        help="where to write the run's resume state (raw weights + counters) for training elsewhere (default: "
             "the checkout's training/minicanvas-sd-unet or training/minicanvas-flux)")] = None,
) -> None:
    """Assemble a shipped pipeline (fp16) from a training run: mini-SD (and its resume state) or mini-Flux."""
    from safetensors import safe_open

    from hirm.minicanvas.build import assemble_flux, assemble_sd
    from hirm.minicanvas.training import RESUME_STATE, export_flux_resume_state, export_unet_resume_state

    if what not in ("sd", "flux"):
        raise HirmError(f"unknown pipeline {what!r}: use sd or flux")
    run_dir = run_dir or Path("runs/unet" if what == "sd" else "runs/flux")
    state = run_dir / "checkpoint" / "state.json"
    if not state.exists():
        raise HirmError(f"{run_dir} has no checkpoint: train one with `hirm minicanvas train "
                        f"{'unet' if what == 'sd' else 'flux'}`")
    metrics = run_dir / "generator_metrics.json"
    if what == "flux":
        records = {"flux": json.loads(state.read_text())}
        if metrics.exists():
            records["flux"]["generations"] = json.loads(metrics.read_text())
        out = assemble_flux(run_dir / "checkpoint" / "ema_flux.safetensors", records=records)
        typer.echo(f"wrote {out} and {export_flux_resume_state(run_dir, resume_state or RESUME_STATE['flux'])}")
        return
    records = {name: json.loads((components / name / "training.json").read_text())
               for name in ("vae", "text_encoder") if (components / name / "training.json").exists()}
    records["unet"] = json.loads(state.read_text())
    if metrics.exists():
        records["unet"]["generations"] = json.loads(metrics.read_text())
    with safe_open(str(run_dir / "data.safetensors"), "pt") as f:
        scaling = float(f.metadata()["scaling_factor"])
    out = assemble_sd(components, run_dir / "checkpoint" / "ema_unet", scaling, records=records)
    resume = export_unet_resume_state(run_dir, resume_state or RESUME_STATE["unet"])
    typer.echo(f"wrote {out} and {resume}")


@minicanvas_app.command("preview")
@handles_errors
def minicanvas_preview(
    out: Annotated[Path, typer.Option(help="PNG to write")] = Path("minicanvas-world.png"),
    seed: Annotated[int, typer.Option(help="seed")] = 0,
) -> None:
    """Render every object x style of the world (rows: objects, columns: styles)."""
    from PIL import Image

    from hirm.images import image_format, save_atomic
    from hirm.minicanvas import world

    image_format(out)
    check_output_file(out)
    g = world.render_grid(seed)
    save_atomic(Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.Resampling.NEAREST), out)
    typer.echo(f"wrote {out}")


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
    _quiet_libraries()
    if out is not None:
        check_output_dir(out)
    from hirm.eval.compare import compare as run_compare
    from hirm.eval.compare import markdown, parse_options

    table = run_compare(model, [c.strip() for c in concepts.split(",") if c.strip()],
                        [m.strip() for m in methods.split(",") if m.strip()], seeds=_parse_seeds(seeds),
                        options=parse_options(option or []), out=out, progress=not as_json, transfer=transfer,
                        attacks=[a.strip() for a in attacks.split(",") if a.strip()])
    if as_json:
        typer.echo(json.dumps(table))
    else:
        typer.echo(markdown(table))
        if out is not None:
            typer.echo(f"wrote {out}/: compare.md, compare.json, compare.png, grid-*.png, patches/")


@app.command()
@handles_errors
def attack(
    model: Model = "minicanvas",
    concept: Annotated[str | None, typer.Option(help="the erased concept (default: the patch's)")] = None,
    patch: Annotated[list[Path] | None, typer.Option(help="patch file(s) of the erased model")] = None,
    attacks: Annotated[str, typer.Option(help="attacks, comma-separated")] = (
        "paraphrase,embedding,ringabell,unlearndiff,cce"),
    seeds: Annotated[str, typer.Option(help="seeds per attack prompt")] = "0,1",
    option: Annotated[list[str] | None, typer.Option("--option", help="ATTACK.KEY=VALUE for one attack's config "
                                                     "(repeatable), e.g. ringabell.generations=20")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for attack.json, prompts-*.json and grid-*.png")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Try to bring an erased concept back; attack success rate (ASR) per attack, and the base model's."""
    _quiet_libraries()
    if out is not None:
        check_output_dir(out)
    from hirm.attacks.report import print_table, run_attacks
    from hirm.eval.compare import parse_options

    patches = _load_patches(patch)
    if not patches:
        raise HirmError("--patch is required: the attacks target an erased model")
    concept = concept or patches[0].concepts[0]
    table = run_attacks(model, concept, patches, [a.strip() for a in attacks.split(",") if a.strip()],
                        _parse_seeds(seeds), options=parse_options(option or [], what="ATTACK"), out=out,
                        progress=not as_json)
    if as_json:
        typer.echo(json.dumps(table))
    else:
        print_table(table)
        if out is not None:
            typer.echo(f"wrote {out}/: attack.json, prompts-*.json, grid-*.png")


@app.command()
def methods() -> None:
    """List the erasure methods."""
    from hirm.erase import METHODS

    for m in METHODS.values():
        typer.echo(f"{m.name:10s} {m.summary}")


def main() -> None:  # pragma: no cover
    from hirm._signals import install_startup

    install_startup()
    app(prog_name="hirm")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
