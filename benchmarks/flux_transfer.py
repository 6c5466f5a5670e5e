"""Zero-shot transfer of a HiRM patch from mini-SD to mini-Flux (the paper's SD -> Flux claim), measured.

For each concept: the patch made on mini-SD's CLIP encoder (hirm's default method unless `--method`), scored on
mini-SD and, unchanged, on mini-Flux (same encoder, which Flux reads only through its pooled vector), also with
the T5 pathway blanked (the limit of a Flux that leans only on the pooled vector); then the same recipe with
`--encoder all`, which also misdirects mini-Flux's T5 encoder; then the paper's synergy (EraseAnything + HiRM on
Flux): a denoiser eraser on the transformer (`--denoiser`, ESD-x in its velocity form at the mini-Flux budget of
docs/baselines.md) alone, with the SD-made patch and with the CLIP + T5 patch (each of the first HiRM seed).
Before that, where prompts reach mini-Flux: classifier accuracy with the prompt in both pathways, in the pooled
CLIP vector only, in the T5 sequence only. Also each model's UA with the concept's word left out of its prompts
(`unnamed_ua`), a reference for a text-side erasure.

    python benchmarks/flux_transfer.py [--concepts circle,heart,...|all] [--flux PATH ...] [--seeds 0,1]
        [--erase-seeds 42,0,1] [--method hirm] [--denoiser esd-x|none] [--out DIR]
    python benchmarks/flux_transfer.py --out DIR --markdown    # the report's tables, as in docs/flux.md

The report (`DIR/transfer.json`) is written after each concept, and a run started again with the same settings
goes on from the concepts it has (22 concepts x 3 HiRM seeds take about two hours on 2 CPU threads).
`--flux` takes one or more mini-Flux pipeline folders (default: the shipped one), e.g. variants trained with
more or less sequence dropout, to see how the pathway split changes transfer. `--erase-seeds`: a HiRM patch's
seed decides (HiRM-R: its random target) what the model draws instead of the concept, so one seed can land on
another concept (or on the concept itself); several seeds give the mean (the mini-SD, pooled-only and synergy
columns use the first).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import hirm
from hirm.encoders import load_pipeline
from hirm.erase import HiRMConfig
from hirm.errors import HirmError
from hirm.eval.minicanvas import evaluate, score, unnamed_ua
from hirm.eval.pathways import ablate, pathway_split
from hirm.images import write_text_atomic
from hirm.minicanvas import registry, world

CONCEPTS = "circle,heart,square,cross,striped,watercolor,polka-dot,outline"
METRICS = ("ua", "ira", "cra")
# the mini-Flux budget of docs/baselines.md (hirm compare --model minicanvas-flux ...)
DENOISER_OPTIONS = {"esd-x": {"steps": 200, "lr": 1e-4, "ddim_steps": 25}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concepts", default=CONCEPTS, help="comma-separated, or 'all'")
    p.add_argument("--flux", nargs="*", default=[], help="mini-Flux pipeline folders (default: the shipped one)")
    p.add_argument("--seeds", default="0,1", help="image seeds of the evaluation grid")
    p.add_argument("--erase-seeds", default=str(HiRMConfig.seed),
                   help="HiRM seeds; with several, each patch is scored and the mean reported")
    p.add_argument("--method", default="hirm", help="the text-encoder method (hirm's default, hirm-r, ...)")
    p.add_argument("--denoiser", default="esd-x", help="the transformer eraser of the synergy columns, or none")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/flux-transfer")
    p.add_argument("--markdown", action="store_true", help="print the tables of the report in --out and stop")
    a = p.parse_args()
    if a.markdown:
        print(markdown(json.loads((Path(a.out) / "transfer.json").read_text())))
        return
    torch.set_num_threads(a.threads)
    concepts = _interleaved() if a.concepts == "all" else a.concepts.split(",")
    seeds = tuple(int(s) for s in a.seeds.split(","))
    erase_seeds = [int(s) for s in a.erase_seeds.split(",")]
    denoiser = None if a.denoiser == "none" else a.denoiser
    settings = {"seeds": list(seeds), "erase_seeds": erase_seeds, "method": a.method, "denoiser": denoiser,
                "denoiser_options": DENOISER_OPTIONS.get(denoiser or "", {})}
    path = Path(a.out) / "transfer.json"
    report = _resume(path, settings)
    classifier = registry.load_classifier()
    sd = load_pipeline("minicanvas")
    grid = {"seeds": seeds, **_sampling(), "progress": False}
    fluxes = {Path(f).name: load_pipeline(f) for f in a.flux} or {"minicanvas-flux": load_pipeline("minicanvas-flux")}

    models = report["models"]
    models.setdefault("minicanvas", {"rows": []})
    # base grids are drawn again on a resumed run (a minute): same seeds, same images
    bases = {"minicanvas": evaluate(sd, None, classifier, **grid)[1]}
    for name, flux in fluxes.items():
        if name not in models:
            start = time.perf_counter()
            split = pathway_split(flux, classifier, **grid)
            print(f"{name} pathways ({time.perf_counter() - start:.0f}s): {json.dumps(split)}", flush=True)
            models[name] = {"pathways": split, "rows": []}
        with ablate(flux, "pooled"):
            bases[name + "/pooled"] = evaluate(flux, None, classifier, **grid)[1]
        bases[name] = evaluate(flux, None, classifier, **grid)[1]

    for c in concepts:
        if all(c in {r["concept"] for r in m["rows"]} for m in models.values()):
            continue
        start = time.perf_counter()
        patches = [hirm.erase(sd, c, method=a.method, seed=e, progress=False) for e in erase_seeds]
        sd_base = bases["minicanvas"]
        models["minicanvas"]["rows"].append({
            "concept": c, "base_acc": _base_acc(sd_base, c), "base": _metrics(score(sd_base, c)),
            "unnamed_ua": _unnamed(sd, classifier, c, grid),
            "sd_patch": _metrics(evaluate(sd, c, classifier, patches[:1], **grid)[0])})
        for name, flux in fluxes.items():
            models[name]["rows"].append(_flux_row(flux, c, classifier, patches, a.method, erase_seeds, denoiser,
                                                  grid, bases[name], bases[name + "/pooled"]))
            seconds = round(time.perf_counter() - start)
            print(json.dumps({"model": name, "seconds": seconds, **models[name]["rows"][-1]}), flush=True)
        write_text_atomic(json.dumps(report, indent=1), path)
    for name, m in models.items():
        keys = [k for k in m["rows"][0] if isinstance(m["rows"][0][k], dict)] if m["rows"] else []
        for key in keys:
            _print(name, key, [r[key] for r in m["rows"]])
        _print_unnamed(name, m["rows"])
    print(f"wrote {path}")


def _flux_row(flux, c: str, classifier, sd_patches: list, method: str, erase_seeds: list[int],
              denoiser: str | None, grid: dict, base, base_pooled) -> dict:
    transfer = [evaluate(flux, c, classifier, [p], **grid)[0] for p in sd_patches]
    with ablate(flux, "pooled"):  # the extreme split: a mini-Flux that reads the prompt only from CLIP
        pooled_only = _metrics(evaluate(flux, c, classifier, sd_patches[:1], **grid)[0])
    both = [hirm.erase(flux, c, method=method, encoder="all", seed=e, progress=False) for e in erase_seeds]
    row = {"concept": c, "base_acc": _base_acc(base, c), "base": _metrics(score(base, c)),
           "unnamed_ua": _unnamed(flux, classifier, c, grid),
           **_per_seed("sd_patch", transfer),
           **_per_seed("clip_and_t5", [evaluate(flux, c, classifier, [p], **grid)[0] for p in both]),
           "pooled_only_base": _metrics(score(base_pooled, c)), "pooled_only_sd_patch": pooled_only}
    if denoiser:
        den = hirm.erase(flux, c, method=denoiser, progress=False, **DENOISER_OPTIONS.get(denoiser, {}))
        for key, patches in (("denoiser", [den]), ("denoiser_and_sd_patch", [sd_patches[0], den]),
                             ("denoiser_and_clip_and_t5", [both[0], den])):
            row[key] = _metrics(evaluate(flux, c, classifier, patches, **grid)[0])
    return row


def markdown(report: dict) -> str:
    """Per mini-Flux model: the transfer table (UA per HiRM seed and mean; means of IRA / CRA in the last row) and,
    where the report has them, the synergy table (a denoiser patch on the transformer alone and with each patch)."""
    sd_rows = {r["concept"]: r for r in report["models"]["minicanvas"]["rows"]}
    out = []
    for name, m in report["models"].items():
        if name == "minicanvas" or not m["rows"]:
            continue
        rows = m["rows"]
        out += [f"### {name}: transfer ({len(rows)} concepts, HiRM seeds {report['erase_seeds']}, image seeds "
                f"{report['seeds']}, method {report['method']})", "",
                "| concept | mini-SD: UA (seed " + str(report["erase_seeds"][0]) + ") | mini-Flux base acc | "
                "word left out | SD patch: UA per seed (mean) | CLIP + T5 patch: UA per seed (mean) | "
                "pooled pathway only: base UA -> SD patch UA |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            out.append(f"| {r['concept']} | {sd_rows[r['concept']]['sd_patch']['ua']:.2f} | {r['base_acc']:.2f} | "
                       f"{r['unnamed_ua']:.2f} | {_seeds(r, 'sd_patch')} | {_seeds(r, 'clip_and_t5')} | "
                       f"{r['pooled_only_base']['ua']:.2f} -> {r['pooled_only_sd_patch']['ua']:.2f} |")
        mean = {k: _mean(rows, k) for k in ("base", "sd_patch", "clip_and_t5", "pooled_only_base",
                                            "pooled_only_sd_patch")}
        sd_mean = _mean(list(sd_rows.values()), "sd_patch")
        out += [f"| **mean** | {_fmt(sd_mean)} | base {_fmt(mean['base'])} | "
                f"{statistics.mean(r['unnamed_ua'] for r in rows):.3f} | **{_fmt(mean['sd_patch'])}** | "
                f"**{_fmt(mean['clip_and_t5'])}** | {_fmt(mean['pooled_only_base'])} -> "
                f"{_fmt(mean['pooled_only_sd_patch'])} |", "",
                "(mean cells: UA, IRA, CRA)", ""]
        if "denoiser" not in rows[0]:
            continue
        keys, den = ("denoiser", "denoiser_and_sd_patch", "denoiser_and_clip_and_t5"), report["denoiser"]
        out += [f"### {name}: synergy ({den} {report['denoiser_options']} on the transformer, "
                f"HiRM seed {report['erase_seeds'][0]})", "",
                f"| concept | base UA / IRA / CRA | {den} | SD patch | {den} + SD patch | "
                f"CLIP + T5 patch | {den} + CLIP + T5 patch |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            first = {k: r[f"{k}_per_seed"][0] for k in ("sd_patch", "clip_and_t5")}
            out.append(f"| {r['concept']} | {_fmt(r['base'])} | {_fmt(r[keys[0]])} | {_fmt(first['sd_patch'])} | "
                       f"{_fmt(r[keys[1]])} | {_fmt(first['clip_and_t5'])} | {_fmt(r[keys[2]])} |")
        firsts = {k: {m_: statistics.mean(r[f"{k}_per_seed"][0][m_] for r in rows) for m_ in METRICS}
                  for k in ("sd_patch", "clip_and_t5")}
        out += [f"| **mean** | {_fmt(mean['base'])} | {_fmt(_mean(rows, keys[0]))} | {_fmt(firsts['sd_patch'])} | "
                f"**{_fmt(_mean(rows, keys[1]))}** | {_fmt(firsts['clip_and_t5'])} | "
                f"**{_fmt(_mean(rows, keys[2]))}** |", ""]
    return "\n".join(out)


def _seeds(row: dict, key: str) -> str:
    return " / ".join(f"{s['ua']:.2f}" for s in row[f"{key}_per_seed"]) + f" ({row[key]['ua']:.2f})"


def _mean(rows: list[dict], key: str) -> dict:
    return {k: statistics.mean(r[key][k] for r in rows) for k in METRICS}


def _fmt(m: dict) -> str:
    return " / ".join(f"{m[k]:.3f}" for k in METRICS)


def _interleaved() -> list[str]:
    """Every concept, objects and styles alternating: a run stopped part-way has scored both kinds."""
    out = []
    for i in range(max(len(world.OBJECTS), len(world.STYLES))):
        out += [*world.OBJECTS[i:i + 1], *world.STYLES[i:i + 1]]
    return out


def _resume(path: Path, settings: dict) -> dict:
    if not path.exists():
        return {**settings, "models": {}}
    report = json.loads(path.read_text())
    if {k: report.get(k) for k in settings} != settings:
        raise HirmError(f"{path} was made with other settings ({ {k: report.get(k) for k in settings} }): "
                        "pass another --out")
    return report


def _sampling() -> dict:
    s = registry.SAMPLING
    return {"steps": s["steps"], "guidance": s["guidance"]}


def _metrics(result: dict) -> dict:
    return {k: round(result[k], 4) for k in METRICS}


def _per_seed(key: str, results: list[dict]) -> dict:
    """{key: mean over erase seeds, key_per_seed: each seed's} of UA / IRA / CRA."""
    each = [_metrics(r) for r in results]
    return {key: {k: round(statistics.mean(e[k] for e in each), 4) for k in METRICS}, f"{key}_per_seed": each}


def _unnamed(pipe, classifier, concept: str, grid: dict) -> float:
    return round(unnamed_ua(pipe, classifier, concept, **{k: v for k, v in grid.items() if k != "progress"}), 4)


def _base_acc(grid, concept: str) -> float:
    s = score(grid, None)
    return s["per_object"].get(concept, s["per_style"].get(concept))


def _print(model: str, what: str, rows: list[dict]) -> None:
    means = {k: statistics.mean(r[k] for r in rows) for k in METRICS}
    print(f"{model} / {what}: " + ", ".join(f"{k.upper()} {v:.3f}" for k, v in means.items()), flush=True)


def _print_unnamed(model: str, rows: list[dict]) -> None:
    print(f"{model} / concept's word left out: UA {statistics.mean(r['unnamed_ua'] for r in rows):.3f} ("
          + ", ".join(f"{r['concept']} {r['unnamed_ua']:.2f}" for r in rows) + ")", flush=True)


if __name__ == "__main__":
    main()
