"""`hirm attack`: run attacks against a patched MiniCanvas model; table, JSON, prompts and image grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hirm.attacks import ATTACKS, attack, budget_options
from hirm.encoders import load_pipeline
from hirm.errors import HirmError
from hirm.images import grid as image_grid
from hirm.images import save_atomic, write_text_atomic
from hirm.minicanvas import registry
from hirm.minicanvas.world import concept_domain


def run_attacks(model: str, concept: str, patches: list, attacks: list[str], seeds: tuple[int, ...],
                options: dict[str, dict[str, Any]] | None = None, out: Path | None = None,
                progress: bool = True, budget: float = 1.0) -> dict[str, Any]:
    """Each attack against `patches`; `budget` multiplies every attack's search budget (steps, generations,
    population; the options the table records are the scaled ones)."""
    registry.require_minicanvas(model)
    concept_domain(concept)
    options = options or {}
    if not attacks:
        raise HirmError("give at least one --attacks, e.g. paraphrase,embedding")
    for name in options:
        ATTACKS.lookup(name)
    for name in attacks:  # option names checked before minutes of work
        ATTACKS.config(name, options.get(name, {}))
    if budget != 1.0:
        options = {**options, **{name: budget_options(name, options.get(name, {}), budget) for name in attacks}}
    pipe = load_pipeline(model)
    classifier = registry.load_classifier()
    sampling = registry.SAMPLING
    rows, details = [], {}
    for name in attacks:
        r = attack(pipe, concept, name, patches, classifier, seeds=seeds, denoise_steps=sampling["steps"],
                   guidance=sampling["guidance"], progress=progress, **options.get(name, {}))
        rows.append(r.row())
        details[name] = r
        if out is not None:
            hits = [p for p in r.probes if any(p["erased"])]
            write_text_atomic(json.dumps({"successful": hits, "all": r.probes}, indent=1),
                              Path(out) / f"prompts-{name}.json")
            save_atomic(image_grid(r.images, cols=len(seeds) * min(8, len(r.probes)), scale=3),
                        Path(out) / f"grid-{name}.png")
    table = {"model": model, "concept": concept, "patches": [p.id for p in patches], "seeds": list(seeds),
             "budget": budget, "options": options, "rows": rows}
    if out is not None:
        write_text_atomic(json.dumps(table, indent=1), Path(out) / "attack.json")
    return table


