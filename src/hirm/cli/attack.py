"""`hirm attack`: bringing an erased concept back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hirm.attacks.runner import run_attacks
from hirm.cli.base import (
    Model,
    app,
    handles_errors,
    load_patches,
    parse_seeds,
    quiet_libraries,
)
from hirm.errors import HirmError
from hirm.eval.compare import parse_options
from hirm.io import check_output_dir


def print_table(table: dict[str, Any]) -> None:
    t = Table(title=f"{table['model']}: attacks on the erased {table['concept']!r}")
    for col in ("attack", "ASR", "base ASR", "n", "seconds"):
        t.add_column(col, justify="left" if col == "attack" else "right")
    for r in table["rows"]:
        t.add_row(r["attack"], f"{r['asr']:.3f}", f"{r['base_asr']:.3f}", str(r["n"]), f"{r['seconds']:.1f}")
    Console().print(t)


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
    budget: Annotated[float, typer.Option(help="multiplies every attack's search budget (steps, generations, "
                                               "population): a low ASR that holds at --budget 4 is not an "
                                               "under-powered attack")] = 1.0,
    out: Annotated[Path | None, typer.Option(help="folder for attack.json, prompts-*.json and grid-*.png")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Try to bring an erased concept back; attack success rate (ASR) per attack, and the base model's."""
    quiet_libraries()
    if out is not None:
        check_output_dir(out)
    patches = load_patches(patch)
    if not patches:
        raise HirmError("--patch is required: the attacks target an erased model")
    concept = concept or patches[0].concepts[0]
    table = run_attacks(model, concept, patches, [a.strip() for a in attacks.split(",") if a.strip()],
                        parse_seeds(seeds), options=parse_options(option or [], what="ATTACK"), out=out,
                        progress=not as_json, budget=budget)
    if as_json:
        typer.echo(json.dumps(table))
    else:
        print_table(table)
        if out is not None:
            typer.echo(f"wrote {out}/: attack.json, prompts-*.json, grid-*.png")
