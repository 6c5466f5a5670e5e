"""`hirm erase`, `apply`, `generate`, `inspect`, `methods`: making a patch and using it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hirm.api import erase as run_erase
from hirm.cli.base import (
    DEVICE_HELP,
    Device,
    Model,
    Only,
    app,
    handles_errors,
    load_patches,
    one_line,
    quiet_libraries,
    read_lines,
)
from hirm.encoders import (
    load_pipeline,
    load_text_encoders,
    parse_dtype,
    resolve_device,
    resolve_model_path,
    stored_dtype,
)
from hirm.erase import METHODS
from hirm.errors import HirmError
from hirm.eval.compare import parse_assignment
from hirm.export import FORMATS, export_checkpoint, export_clip, export_lora, text_components
from hirm.generate import sample
from hirm.images import grid, image_format, save_atomic
from hirm.io import check_output_dir, check_output_file
from hirm.minicanvas import registry
from hirm.patch import Patch
from hirm.saving import save_pretrained_atomic


@app.command()
@handles_errors
def erase(
    model: Model,
    out: Annotated[Path, typer.Option(help="patch file to write (.safetensors)")],
    concept: Annotated[list[str] | None, typer.Option(help="the concept to erase, e.g. 'Van Gogh' (repeatable: "
                                                      "one patch for all; hirm, the default, is the method "
                                                      "measured for lists)")] = None,
    concepts_file: Annotated[Path | None, typer.Option(help="text file with one concept per line (# comments); "
                                                            "very long lists: --set concepts_per_step=8")] = None,
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
    preserve: Annotated[list[str] | None, typer.Option(help="a concept or prompt to keep as it is, e.g. 'a cat' "
                                                       "(repeatable; hirm-r/-s, uce, rece)")] = None,
    preserve_file: Annotated[Path | None, typer.Option(help="text file with one concept or prompt to keep per "
                                                       "line (# comments)")] = None,
    paper_defaults: Annotated[bool, typer.Option(help="the paper's recipe exactly, ignoring hirm's defaults for "
                                                 "this model")] = False,
    lora_rank: Annotated[int | None, typer.Option(help="HiRM: train peft LoRA adapters of this rank on the trained "
                                                       "weights instead of the weights (biases kept), so the patch "
                                                       "exports exactly as a LoRA")] = None,
    robust: Annotated[bool, typer.Option(help="the robust preset: the patch also edits the denoiser's "
                                         "cross-attention (closed form, same reference), so inputs that bypass the "
                                         "text encoder stay erased; SD-1.x/2.x-style UNets (elsewhere the text "
                                         "half alone, with a warning). Options of that half: --set uce.KEY=VALUE"
                                         )] = False,
    option: Annotated[list[str] | None, typer.Option("--set", help="any other config field of the method, KEY=VALUE "
                                                     "(JSON values), e.g. --set retain_weight=500 --set "
                                                     "templates='[\"a {}\", \"a photo of {}\"]'; `hirm methods "
                                                     "METHOD` lists them with defaults; for one part of a+b: --set "
                                                     "esd-x.steps=200")] = None,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="precision the model is read in: auto (float32), float32, float16 "
                                            "(reads fp16 variant files), bfloat16; the trained weights are always "
                                            "float32 copies, and the patch applies to float16/float32 loads (and "
                                            "bfloat16 ones)")] = "auto",
) -> None:
    """Erase a concept; write its safety patch."""
    quiet_libraries()
    if out.suffix != ".safetensors":
        raise HirmError(f"--out {out}: patches are safetensors files; use a name ending in .safetensors")
    check_output_file(out)  # before minutes of training, not after
    where, read_as = resolve_device(device), parse_dtype(dtype)  # a device this machine lacks: before loading
    concepts = list(concept or []) + (read_lines(concepts_file, "--concepts-file") if concepts_file else [])
    if not concepts:
        raise HirmError("no concept given: pass --concept 'Van Gogh' (repeatable) or --concepts-file FILE")
    settings = dict(parse_assignment(o) for o in option or [])
    kept = list(preserve or []) + (read_lines(preserve_file, "--preserve-file") if preserve_file else [])
    if kept:
        settings["preserve"] = tuple(dict.fromkeys(kept))
    patch = run_erase(
        model, concepts if len(concepts) > 1 else concepts[0], method=method, encoder=encoder, kind=kind,
        paper_defaults=paper_defaults, target=target,
        steps=steps, lr=lr, seed=seed, layers=layers, lora_rank=lora_rank, device=where, dtype=read_as, robust=robust,
        **settings,
    )
    patch.save(out)
    for name, seconds in patch.seconds.items():
        i = patch.info.get(name, {})
        detail = (f", loss {i['loss_first']:.4g} -> {i['loss_last']:.4g}" if "loss_first" in i else "") + (
            f", cosine to target {i['cos_to_target_before']:.3f} -> {i['cos_to_target_after']:.3f}"
            if "cos_to_target_after" in i else "")
        typer.echo(f"{name}: {seconds:.2f}s{detail}")
    typer.echo(f"wrote {out} ({patch.nbytes / 1e6:.2f} MB, {len(patch.tensors)} tensors, id {patch.id})")




@app.command()
@handles_errors
def apply(
    model: Model,
    patch: Annotated[list[Path], typer.Option(help="patch file(s), applied in order")],
    out: Annotated[Path, typer.Option(help="folder to save the patched pipeline to")],
    only: Only = None,
    device: Annotated[str, typer.Option(help="where the pipeline is loaded to be patched (cpu: nothing is "
                                        "computed); " + DEVICE_HELP)] = "cpu",
    dtype: Annotated[str, typer.Option(help="precision the pipeline is loaded and saved in: auto (as its text "
                                            "encoder is stored), float32, float16, bfloat16")] = "auto",
) -> None:
    """Apply patch(es) to a pipeline and save the result (save_pretrained)."""
    quiet_libraries()
    check_output_dir(out, empty=True)
    where, wanted = resolve_device(device), parse_dtype(dtype)
    patches = load_patches(patch, only)
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
    only: Only = None,
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
    quiet_libraries()
    if n < 1:
        raise HirmError(f"-n {n}: need at least one image")
    image_format(out)
    check_output_file(out)
    where, wanted = resolve_device(device), parse_dtype(dtype)
    patches = load_patches(patch, only)
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
    p = Patch.load(patch)
    s = p.summary()
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    say = lambda text: typer.echo(one_line(text))  # noqa: E731 (the file's strings, control characters escaped)
    say(f"patch      {patch} (id {s['id']})")
    say(f"concepts   {', '.join(s['concepts'])}")
    say(f"method     {s['method']}")
    # a joined patch (hirm+uce, the --robust preset): which part made each half
    made_by = {c: name for name, i in s["info"].items() if isinstance(i, dict) for c in i} if "+" in s["method"] else {}
    for c, v in s["components"].items():
        by = f" (by {made_by[c]})" if c in made_by else ""
        say(f"component  {c}{by}: {v['tensors']} tensors, base fingerprint {v['fingerprint'][:16]}")
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
def export(
    patch: Annotated[Path, typer.Argument(help="the patch file (.safetensors)")],
    model: Model,
    out: Annotated[Path, typer.Option(help="clip: a new folder (one file per encoder); lora: the LoRA file")],
    file_format: Annotated[str, typer.Option(
        "--format", help="clip: the patched text encoders alone (ComfyUI's CLIPLoader / DualCLIPLoader); lora: a "
                         "text-encoder LoRA (AUTOMATIC1111 / Forge, ComfyUI's LoraLoader, diffusers' "
                         "load_lora_weights)")] = "clip",
    rank: Annotated[int, typer.Option(help="lora: rank of the truncated SVD of each weight change")] = 16,
    checkpoint: Annotated[Path | None, typer.Option(help="checkpoint: the model's single-file .safetensors "
                                                         "checkpoint, written again with the patch in it")] = None,
    lora_layout: Annotated[str, typer.Option(help="lora: key layout, kohya (read by all three) or diffusers")]
    = "kohya",
    dtype: Annotated[str, typer.Option(help="clip: precision of the written encoders: auto (as stored), float32, "
                                            "float16, bfloat16")] = "auto",
) -> None:
    """Write a patch in a format other tools load: the patched CLIP encoders, a text-encoder LoRA, or a
    single-file checkpoint."""
    quiet_libraries()
    if file_format not in FORMATS:
        raise HirmError(f"--format {file_format!r}: use one of {', '.join(FORMATS)}")
    if file_format == "checkpoint" and checkpoint is None:
        raise HirmError("--format checkpoint needs --checkpoint FILE: the model's own single-file checkpoint")
    if checkpoint is not None and file_format != "checkpoint":
        raise HirmError("--checkpoint goes with --format checkpoint")
    if file_format in ("lora", "checkpoint"):
        if out.suffix != ".safetensors":
            raise HirmError(f"--out {out}: a {file_format} is a safetensors file; use a name ending in .safetensors")
        check_output_file(out)
    else:
        check_output_dir(out, empty=True)
    written_as = parse_dtype(dtype)  # a bad name: before anything is loaded
    loaded = Patch.load(patch)
    if file_format != "clip":  # compared and measured in float32; a checkpoint keeps its own dtypes
        written_as = None
    text = [c for c in loaded.components if c.startswith("text_encoder")]
    if not text:
        raise HirmError(f"{patch} edits no text encoder (it edits {', '.join(loaded.components)}): these formats "
                        "hold text encoders; apply it with hirm apply --out DIR instead")
    encoders = load_text_encoders(model, which=text,
                                  dtype=written_as or (stored_dtype(model) if file_format == "clip" else "float32"))
    if file_format == "clip":
        result = export_clip(loaded, encoders, out)
    elif file_format == "checkpoint":
        result = export_checkpoint(loaded, encoders, resolve_model_path(str(model)), checkpoint, out)
    else:
        result = export_lora(loaded, encoders, text_components(model), out, rank=rank, layout=lora_layout)
    for component, info in result.info.items():
        if file_format == "clip":
            typer.echo(f"{component}: {info['file']} ({info['tensors']} tensors, {info['dtype']})")
        elif file_format == "checkpoint":
            typer.echo(f"{component}: {info['tensors']} tensors written into {', '.join(info['keys'])}")
        else:
            typer.echo(f"{component}: rank {info['rank']}, {info['weights']} weights, weight change error "
                       f"{info['weight_error']:.2e}; final representations off by "
                       f"{info['representation_error_concept']:.1%} (concept prompts) / "
                       f"{info['representation_error_other']:.1%} (others) of the patch's change; "
                       f"{len(info['dropped'])} bias changes left out (that alone: "
                       f"{info['representation_error_without_biases']:.1%})")
    typer.echo(f"wrote {', '.join(str(f) for f in result.files)}")


@app.command()
@handles_errors
def methods(
    name: Annotated[str | None, typer.Argument(help="a method: list its options (the --set KEYs) with their "
                                                    "defaults")] = None,
) -> None:
    """List the erasure methods, or one method's options."""
    if name is None:
        for m in METHODS.values():
            typer.echo(f"{m.name:10s} {m.summary}")
        typer.echo("\n`hirm methods NAME` lists a method's options; `hirm erase --set KEY=VALUE` sets one.")
        return
    spec = METHODS.lookup(name)
    table = Table(title=f"{spec.name}: {spec.summary}", title_justify="left")
    for column in ("option", "default", "meaning"):
        table.add_column(column, overflow="fold")
    for option, default, meaning in spec.option_help():
        table.add_row(option, Text(json.dumps(default)), Text(meaning))  # Text: brackets are not markup
    Console().print(table)
    for family, values in spec.family_defaults.items():
        typer.echo(f"on {family} models (unless --paper-defaults): "
                   + ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items()))
    if spec.fixed:
        typer.echo("fixed (what makes it " + spec.name + "): " + ", ".join(f"{k}={json.dumps(v)}"
                                                                         for k, v in spec.fixed.items()))
