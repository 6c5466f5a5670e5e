"""`hirm minicanvas train | build | preview`: the embedded world's models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hirm.cli.base import (
    app,
    handles_errors,
)
from hirm.errors import HirmError
from hirm.eval.compare import parse_assignment
from hirm.images import image_format, save_atomic
from hirm.io import check_output_file
from hirm.minicanvas import train, world
from hirm.minicanvas.build import assemble_flux, assemble_sd
from hirm.minicanvas.train import RESUME_STATE, export_flux_resume_state, export_unet_resume_state

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

    trainer = train.TRAINERS.lookup(what)
    kwargs = dict(parse_assignment(o) for o in option or [])
    kwargs |= {k: v for k, v in (("steps", steps), ("device", device), ("workers", workers),
                                 ("time_budget", time_budget)) if v is not None}
    if what in train.RESUME_STATE:
        default = train.RESUME_STATE[what]
        kwargs["init_from"] = resume_state or (default if (default / "state.json").exists() else None)
    kwargs = train.TRAINERS.config(what, kwargs)
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
        help="where to write the run's resume state (raw weights, for flux its EMA too, + counters) for training "
             "elsewhere (default: "
             "the checkout's training/minicanvas-sd-unet or training/minicanvas-flux)")] = None,
    ship: Annotated[bool, typer.Option(help="--no-ship: write only the resume state (flux), keeping the shipped "
                                            "pipeline: a phase committed before it is good enough to ship")] = True,
) -> None:
    """Assemble a shipped pipeline (fp16) from a training run: mini-SD (and its resume state) or mini-Flux."""
    from safetensors import safe_open

    if what not in ("sd", "flux"):
        raise HirmError(f"unknown pipeline {what!r}: use sd or flux")
    if what == "sd" and not ship:
        raise HirmError("--no-ship is for flux: mini-SD's resume state is its shipped UNet's raw twin")
    run_dir = run_dir or Path("runs/unet" if what == "sd" else "runs/flux")
    state = run_dir / "checkpoint" / "state.json"
    if not state.exists():
        raise HirmError(f"{run_dir} has no checkpoint: train one with `hirm minicanvas train "
                        f"{'unet' if what == 'sd' else 'flux'}`")
    if not ship:
        typer.echo(f"wrote {export_flux_resume_state(run_dir, resume_state or RESUME_STATE['flux'])}")
        return
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

    image_format(out)
    check_output_file(out)
    g = world.render_grid(seed)
    save_atomic(Image.fromarray(g).resize((g.shape[1] * 4, g.shape[0] * 4), Image.Resampling.NEAREST), out)
    typer.echo(f"wrote {out}")
