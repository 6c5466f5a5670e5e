"""UnlearnCanvas-style evaluation on MiniCanvas: generate every object x every style, classify, and score
the erasure of one concept as UA (unlearning accuracy), IRA (in-domain retain) and CRA (cross-domain retain).

For an object concept: UA = fraction of its images NOT classified as it; IRA = object accuracy on the other
objects' images; CRA = style accuracy on the other objects' images. For a style concept, swap the roles.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hirm.generate import sample
from hirm.minicanvas import world
from hirm.minicanvas.classifier import MiniCanvasClassifier, classify_images
from hirm.minicanvas.world import concept_domain
from hirm.patch import all_applied


@dataclass
class Grid:
    """Generated images of every (object, style, seed) cell, with the classifier's predictions."""

    images: list  # PIL images, row-major over (object, style, seed)
    objects: np.ndarray
    styles: np.ndarray
    pred_objects: np.ndarray
    pred_styles: np.ndarray
    prompts: list[str]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _cells(templates: tuple[str, ...], seeds: tuple[int, ...]) -> Iterator[tuple[int, int, str, int]]:
    """(object index, style index, template, image seed) of every grid cell; image seed = seed * 1000 + cell
    index, so a cell's image does not depend on which other cells are drawn (same across models)."""
    cell = 0
    for o in range(len(world.OBJECTS)):
        for s in range(len(world.STYLES)):
            for template in templates:
                for seed in seeds:
                    yield o, s, template, seed * 1000 + cell
                cell += 1


def _prompt(template: str, obj: str, style: str) -> str:
    return " ".join(template.format(object=obj, style=style).split())


def generate_grid(pipe, classifier: MiniCanvasClassifier, seeds: tuple[int, ...] = (0, 1),
                  templates: tuple[str, ...] = world.EVAL_TEMPLATES, steps: int | None = None,
                  guidance: float | None = None, progress: bool = True) -> Grid:
    """Every object x style x template x seed."""
    cells = list(_cells(templates, seeds))
    prompts = [_prompt(t, world.OBJECTS[o], world.STYLES[s]) for o, s, t, _ in cells]
    start = time.perf_counter()
    images = sample(pipe, prompts, seeds=[c[3] for c in cells], steps=steps, guidance=guidance, progress=progress)
    seconds = time.perf_counter() - start
    pred = classify_images(classifier, images)
    return Grid(images, np.asarray([c[0] for c in cells]), np.asarray([c[1] for c in cells]), pred["object"],
                pred["style"], prompts, seconds)


def unnamed_ua(pipe, classifier: MiniCanvasClassifier, concept: str, seeds: tuple[int, ...] = (0, 1),
               templates: tuple[str, ...] = world.EVAL_TEMPLATES, steps: int | None = None,
               guidance: float | None = None) -> float:
    """UA of the concept's grid cells drawn with its word left out of the prompt ("a image in watercolor style"
    for circle): what an erasure that removed the word's meaning outright would score, a reference for a text-side
    erasure. It is below 1 where the model's default drawing is judged to be the concept; a misdirected prompt
    can land further from the concept than that default (a higher UA) or nearer to it."""
    domain, idx = concept_domain(concept)
    cells = [c for c in _cells(templates, seeds) if c[0 if domain == "object" else 1] == idx]
    prompts = [_prompt(t, "" if domain == "object" else world.OBJECTS[o],
                       "" if domain == "style" else world.STYLES[s]) for o, s, t, _ in cells]
    images = sample(pipe, prompts, seeds=[c[3] for c in cells], steps=steps, guidance=guidance)
    pred = classify_images(classifier, images)[domain]
    return float((pred != idx).mean())


def score(grid: Grid, concept: str | None) -> dict[str, Any]:
    """UA/IRA/CRA for `concept` (None: plain accuracies of the model), plus per-concept accuracies."""
    obj_ok = grid.pred_objects == grid.objects
    sty_ok = grid.pred_styles == grid.styles
    out: dict[str, Any] = {
        "n_images": len(grid.images),
        "object_acc": float(obj_ok.mean()),
        "style_acc": float(sty_ok.mean()),
        "per_object": {n: float(obj_ok[grid.objects == i].mean()) for i, n in enumerate(world.OBJECTS)},
        "per_style": {n: float(sty_ok[grid.styles == i].mean()) for i, n in enumerate(world.STYLES)},
        "seconds": round(grid.seconds, 2),
    }
    if concept is None:
        return out
    domain, idx = concept_domain(concept)
    if domain == "object":
        target, ok_same, ok_cross = grid.objects == idx, obj_ok, sty_ok
    else:
        target, ok_same, ok_cross = grid.styles == idx, sty_ok, obj_ok
    out.update({
        "concept": concept,
        "domain": domain,
        "ua": float(1.0 - ok_same[target].mean()),
        "ira": float(ok_same[~target].mean()),
        "cra": float(ok_cross[~target].mean()),
    })
    return out


def judged_as(grid: Grid, concept: str) -> dict[str, int]:
    """The judge's confusion row for `concept`: how its cells (images prompted with it) are labelled, by count."""
    domain, i = concept_domain(concept)
    labels, pred, names = ((grid.objects, grid.pred_objects, world.OBJECTS) if domain == "object"
                           else (grid.styles, grid.pred_styles, world.STYLES))
    chosen = pred[labels == i]
    return {names[k]: int((chosen == k).sum()) for k in np.unique(chosen)}


def score_concepts(grid: Grid, concepts: list[str]) -> dict[str, Any]:
    """Several erased concepts at once: each one's UA, and each other concept's accuracy (its own head) on the
    cells where no erased concept appears, i.e. what the erasure should have left alone."""
    obj_ok = grid.pred_objects == grid.objects
    sty_ok = grid.pred_styles == grid.styles
    erased = [concept_domain(c) for c in concepts]
    hit_objects = [i for d, i in erased if d == "object"]
    hit_styles = [i for d, i in erased if d == "style"]
    clean = ~np.isin(grid.objects, hit_objects) & ~np.isin(grid.styles, hit_styles)
    ua = {}
    for c, (domain, i) in zip(concepts, erased, strict=True):
        ok, label = (obj_ok, grid.objects) if domain == "object" else (sty_ok, grid.styles)
        ua[c] = float(1.0 - ok[label == i].mean())
    kept = {n: float(obj_ok[clean & (grid.objects == i)].mean()) for i, n in enumerate(world.OBJECTS)
            if i not in hit_objects}
    kept |= {n: float(sty_ok[clean & (grid.styles == i)].mean()) for i, n in enumerate(world.STYLES)
             if i not in hit_styles}
    return {"concepts": list(concepts), "ua": float(np.mean(list(ua.values()))) if ua else None, "ua_per_concept": ua,
            "kept_acc": float(np.mean(list(kept.values()))), "kept_per_concept": kept,
            "n_images": len(grid.images)}


def evaluate(pipe, concept: str | None, classifier: MiniCanvasClassifier, patches: list | None = None,
             **grid_kwargs: Any) -> tuple[dict[str, Any], Grid]:
    """Score `pipe` (with `patches` applied for the duration) on the full grid."""
    with all_applied(patches or [], pipe):
        grid = generate_grid(pipe, classifier, **grid_kwargs)
    return score(grid, concept), grid
