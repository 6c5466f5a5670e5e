"""`hirm compare`: every method on every concept in one process, scored by the same evaluation.

Per (method, concept): erase wall time, extra resident memory while erasing, patch size, UA / IRA / CRA.
Writes the table as Markdown and JSON, a bar chart of mean UA / IRA / CRA per method, and an image grid of
the same prompts and seeds under each method.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hirm import api
from hirm.attacks import ATTACKS, attack
from hirm.encoders import load_pipeline, model_components
from hirm.erase import METHODS, method_parts, robust_method
from hirm.errors import HirmError
from hirm.eval.erasure import evaluate_erasure
from hirm.generate import sample
from hirm.images import grid as image_grid
from hirm.images import save_atomic, write_text_atomic
from hirm.minicanvas import registry, world
from hirm.minicanvas.world import concept_domain
from hirm.patch import Patch, components_of

METRICS = ("ua", "ira", "cra")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak resident set size (VmHWM) to the current one; False where the kernel (or a
    sandbox such as gVisor) does not support it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmHWM") <= _status_kb("VmRSS") + 1024
    except (OSError, StopIteration):
        return False


@contextmanager
def peak_memory(interval: float = 0.01) -> Iterator[dict[str, float]]:
    """Peak resident memory above the starting level while the block runs, in MB.

    Two sources, the larger wins: the kernel's high-water mark (VmHWM, reset at the start), which misses no
    peak but is not kept by every kernel, and a thread sampling VmRSS every `interval` s, which works
    everywhere but can miss a peak shorter than that."""
    out = {"peak_mb": 0.0}
    hwm = _reset_high_water_mark()
    start = peak = _status_kb("VmRSS")
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(interval):
            peak = max(peak, _status_kb("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield out
    finally:
        stop.set()
        sampler.join()
        peak = max(peak, _status_kb("VmRSS"), _status_kb("VmHWM") if hwm else 0)
        out["peak_mb"] = round((peak - start) / 1024, 1)


def parse_assignment(text: str) -> tuple[str, Any]:
    """"KEY=VALUE" -> (key, value): VALUE read as JSON where it parses (lists become tuples), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise HirmError(f"{text!r}: use KEY=VALUE, e.g. steps=200")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.replace("-", "_"), tuple(value) if isinstance(value, list) else value


def parse_options(options: list[str], what: str = "METHOD") -> dict[str, dict[str, Any]]:
    """["esd-x.steps=200", "hirm-r.lr=1e-4"] -> {"esd-x": {"steps": 200}, "hirm-r": {"lr": 1e-4}}."""
    out: dict[str, dict[str, Any]] = {}
    for opt in options:
        method, dot, assignment = opt.partition(".")
        if not dot or "=" not in assignment or "=" in method:
            example = "esd-x.steps=200" if what == "METHOD" else "ringabell.generations=20"
            raise HirmError(f"--option {opt!r}: use {what}.OPTION=VALUE, e.g. {example}")
        key, value = parse_assignment(assignment)
        out.setdefault(method, {})[key] = value
    return out


def _erase(pipe, concept: str, label: str, parts: list[str], options: dict[str, dict[str, Any]]):
    """The patch of `label`'s method. Each part of a combination gets its own options (`esd-x.steps` is ESD's
    budget inside `hirm-r+esd-x` too, and never HiRM's); a label's own options (`hirm-r/robust.robust_rounds`,
    `hirm-r+esd-x.lr`) go to the parts that have them; `robust: true` makes the label the robust preset. HiRM-S
    targets the world's super-category unless told otherwise, as in the paper."""
    own = dict(options.get(label, {}) if label not in parts else {})
    method = "+".join(parts)
    robust = bool(own.pop("robust", False))  # e.g. "hirm/robust" with {"robust": true}: the robust preset
    if robust:  # options reach its denoiser half too
        parts = method_parts(robust_method(method, model_components(pipe))[0])
    kw = {f"{part}.{k}": v for part in parts for k, v in options.get(part, {}).items()}
    # "hirm-r/robust", "hirm-r+esd-x": the label's own options beat its parts' (esd-x/lr3e-4 next to esd-x's
    # budget); scoped to each part that has the option, left unscoped where none has it (erase then says so)
    for k, v in own.items():
        owners = [part for part in parts if k in METHODS[part].options()]
        kw.update({f"{part}.{k}": v for part in owners} if owners else {k: v})
    if "hirm-s" in parts and "target" not in kw and "hirm-s.target" not in kw:
        kw["hirm-s.target"] = world.supercategory(concept)
    try:
        return api.erase(pipe, concept, method=method, progress=False, robust=robust, **kw)
    except HirmError as e:
        raise HirmError(f"--option {label}: {e}") from None


def compare(model: str, concepts: list[str], methods: list[str], seeds: tuple[int, ...] = (0,),
            options: dict[str, dict[str, Any]] | None = None, out: Path | None = None,
            progress: bool = True, transfer: bool = False, attacks: list[str] | None = None) -> dict[str, Any]:
    """Every method on every concept of `model`; with `transfer`, each patch is also scored, unchanged, on
    mini-Flux (`flux_ua` / `flux_ira` / `flux_cra`; None for patches that edit a part Flux does not have);
    with `attacks`, each erased model is attacked (`asr_<attack>`; the base row holds the base model's rate).
    `options` holds method options and, keyed by attack name, attack options."""
    registry.require_minicanvas(model)
    if transfer and model != "minicanvas":
        raise HirmError("--transfer scores mini-SD patches on mini-Flux: use it with --model minicanvas")
    options = options or {}
    if not concepts or not methods:
        raise HirmError("give at least one --concepts and one --methods")
    for c in concepts:
        concept_domain(c)
    # "hirm-r/robust": the method under a label, so that it can run twice with different --option values
    parts = {m: method_parts(m.partition("/")[0]) for m in methods}  # before minutes of work
    attacks = list(attacks or [])
    unknown = sorted(set(options) - {p for ps in parts.values() for p in ps} - set(methods) - set(attacks))
    if unknown:
        raise HirmError(f"--option for {unknown[0]!r}, which is not among --methods or --attacks")
    if attacks:
        for name in attacks:
            ATTACKS.config(name, options.get(name, {}))
    method_options = {k: v for k, v in options.items() if k not in attacks}
    pipe = load_pipeline(model)
    flux = load_pipeline("minicanvas-flux") if transfer else None
    classifier = registry.load_classifier()
    kw = {"seed": 0, "steps": registry.SAMPLING["steps"], "guidance": registry.SAMPLING["guidance"]}
    rows: list[dict[str, Any]] = []
    grids: dict[str, list] = {}
    # each finished row is appended to out/rows.jsonl at once, so an interrupted run resumes where it stopped
    done = _finished_rows(out, seeds, options, parts)
    attack_cache: dict = {}  # probes that do not depend on the erased model, found once per concept
    jobs = [(c, m) for c in concepts for m in ("base", *methods)]
    for concept, method in tqdm(jobs, desc="compare", disable=not progress):
        patch = _saved_patch(out, method, concept) if (method, concept) in done else None
        if (method, concept) in done and (patch is not None or method == "base"):  # no patch file: erase again
            row = done[method, concept]
        elif method == "base":
            result = evaluate_erasure(model, concept, [], seeds=seeds, pipe=pipe, classifier=classifier,
                                      progress=False)
            row, patch = _append(out, _row("base", concept, result, 0.0, 0.0, 0), seeds, options), None
        else:
            gc.collect()
            start = time.perf_counter()
            with peak_memory() as mem:
                patch = _erase(pipe, concept, method, parts[method], method_options)
            seconds = time.perf_counter() - start
            size = _saved_size(patch, out, _patch_name(method, concept))
            result = evaluate_erasure(model, concept, [patch], seeds=seeds, pipe=pipe, classifier=classifier,
                                      progress=False)
            row = _append(out, _row(method, concept, result, seconds, mem["peak_mb"], size), seeds, options)
        columns = len(row)
        if flux is not None and "flux_ua" not in row:
            row.update(_transfer_scores(flux, concept, patch, seeds, classifier))
        for name in attacks:
            if f"asr_{name}" not in row:
                row[f"asr_{name}"], row[f"attack_s_{name}"] = _attack_rate(
                    pipe, model, concept, name, patch, seeds, classifier, options.get(name, {}), attack_cache)
        if len(row) > columns:  # the row again, now with its transfer / ASR columns (the later line wins)
            _append(out, row, seeds, options)
        rows.append(row)
        with patch.applied(pipe) if patch is not None else nullcontext():
            grids.setdefault(concept, []).append((method, sample(pipe, world.grid_prompts(concept), **kw)))
    table = {"model": model, "seeds": list(seeds), "options": options, "rows": rows,
             "summary": summarise(rows)}
    if out is not None:
        write_outputs(Path(out), table, grids)
    return table


def _transfer_scores(flux, concept: str, patch, seeds: tuple[int, ...], classifier) -> dict[str, float | None]:
    """UA / IRA / CRA of the patch applied unchanged to mini-Flux; None where it edits a part mini-Flux lacks
    (a UNet)."""
    if patch is not None and any(c not in components_of(flux) for c in patch.components):
        return {f"flux_{m}": None for m in METRICS}
    result = evaluate_erasure("minicanvas-flux", concept, [patch] if patch is not None else [], seeds=seeds,
                              pipe=flux, classifier=classifier, progress=False)
    return {f"flux_{m}": round(result[m], 4) for m in METRICS}


def _attack_rate(pipe, model: str, concept: str, name: str, patch, seeds: tuple[int, ...], classifier,
                 options: dict[str, Any], cache: dict) -> tuple[float, float]:
    """ASR of one attack on the model with `patch` (None: the base model), and its wall time in seconds."""
    s = registry.SAMPLING
    r = attack(pipe, concept, name, [patch] if patch is not None else [], classifier, seeds=seeds,
               denoise_steps=s["steps"], guidance=s["guidance"], progress=False, cache=cache, **options)
    return round(r.asr, 4), round(r.seconds, 2)


def _patch_name(method: str, concept: str) -> str:
    return f"{method.replace('/', '@')}--{concept.replace(' ', '-')}.safetensors"


def _saved_patch(out: Path | None, method: str, concept: str):
    path = None if out is None or method == "base" else Path(out) / "patches" / _patch_name(method, concept)
    return Patch.load(path) if path is not None and path.exists() else None


def _finished_rows(out: Path | None, seeds: tuple[int, ...], options: dict,
                   parts: dict[str, list[str]]) -> dict[tuple[str, str], dict]:
    """Rows of an earlier run into the same folder with the same seeds and the same options for that row's
    method (its own and its parts'), so adding a method with options keeps the other rows. An attack whose
    options changed loses only its `asr_` column, so attacks can be added to a finished comparison without
    erasing again."""
    path = None if out is None else Path(out) / "rows.jsonl"
    if path is None or not path.exists():
        return {}
    options = json.loads(json.dumps(options))  # as stored (tuples become lists)

    def own(opts: dict, method: str) -> dict:
        mine = {method, *parts.get(method, [])}
        return {k: v for k, v in opts.items() if k in mine}

    found = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: redo that job
            continue
        row, stored = rec["row"], rec.get("options", {})
        if rec.get("seeds") == list(seeds) and own(stored, row["method"]) == own(options, row["method"]):
            changed = [a for a in ATTACKS if stored.get(a, {}) != options.get(a, {})]
            stale = {f"{column}_{a}" for a in changed for column in ("asr", "attack_s")}
            found[row["method"], row["concept"]] = {k: v for k, v in row.items() if k not in stale}
    return found


def _append(out: Path | None, row: dict[str, Any], seeds: tuple[int, ...], options: dict) -> dict[str, Any]:
    if out is not None:
        path = Path(out) / "rows.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab+") as f:  # appends go to the end whatever the read position
            if f.seek(0, os.SEEK_END):
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut by a kill: end it first
                    f.write(b"\n")
            f.write((json.dumps({"seeds": list(seeds), "options": options, "row": row}) + "\n").encode())
    return row


def _saved_size(patch, out: Path | None, name: str) -> int:
    """Size of the patch file (kept under out/patches/ when there is an output folder)."""
    if out is not None:
        return patch.save(Path(out) / "patches" / name).stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        return patch.save(Path(tmp) / name).stat().st_size


def _row(method: str, concept: str, result: dict, seconds: float, peak_mb: float, size: int) -> dict[str, Any]:
    return {"method": method, "concept": concept, "domain": result["domain"],
            **{m: round(result[m], 4) for m in METRICS}, "seconds": round(seconds, 3), "peak_mem_mb": peak_mb,
            "patch_bytes": size, "n_images": result["n_images"]}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: mean and spread (population std) of each metric, mean erase time, and `time_vs_reference`: the
    median over concepts of its erase time over the reference method's on the same concept (one slowed row does
    not move it). The reference is hirm's default method where the run has it, else the paper's HiRM-R."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    reference = time_reference(rows)
    ref = {r["concept"]: r["seconds"] for r in rows if r["method"] == reference}
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        s: dict[str, Any] = {"method": m, "n": len(rs)}
        for k in (*METRICS, "seconds", "peak_mem_mb", "patch_bytes"):
            vals = [r[k] for r in rs]
            s[k] = round(statistics.fmean(vals), 4)
            if k in METRICS:
                s[f"{k}_std"] = round(statistics.pstdev(vals), 4)
        for k in sorted({k for r in rs for k in r if k.startswith(("asr_", "attack_s_"))}):
            s[k] = round(statistics.fmean(r[k] for r in rs if k in r), 4)
        for k in (f"flux_{m}" for m in METRICS):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if any(k in r for r in rs):
                s[k] = round(statistics.fmean(vals), 4) if vals else None
        ratios = [r["seconds"] / ref[r["concept"]] for r in rs if ref.get(r["concept"])]
        s["time_vs_reference"] = round(statistics.median(ratios), 2) if ratios and m != "base" else None
        out.append(s)
    return out


def time_reference(rows: list[dict[str, Any]]) -> str | None:
    """The method erase times are compared with: `hirm` (the default) where the run has it, else `hirm-r`."""
    present = {r["method"] for r in rows}
    return next((m for m in ("hirm", "hirm-r") if m in present), None)


def markdown(table: dict[str, Any]) -> str:
    flux = any("flux_ua" in s for s in table["summary"])
    asr = sorted({k for s in table["summary"] for k in s if k.startswith("asr_")})
    extra_head = (" Flux UA | Flux IRA | Flux CRA |" if flux else "") + "".join(f" ASR {k[4:]} |" for k in asr)
    ref = time_reference(table["rows"]) or "-"
    lines = [f"# hirm compare on {table['model']} (seeds {table['seeds']})", "",
             f"| method | n | UA | IRA | CRA | erase s | x {ref} | peak MB | patch MB |" + extra_head,
             "|---|---|---|---|---|---|---|---|---|" + "---|" * ((3 if flux else 0) + len(asr))]
    for s in table["summary"]:
        ratio = "-" if s["time_vs_reference"] is None else f"{s['time_vs_reference']:.2f}"
        cells = "".join(" n/a |" if s.get(f"flux_{m}") is None else f" {s[f'flux_{m}']:.3f} |" for m in METRICS)
        lines.append(f"| {s['method']} | {s['n']} | " + " | ".join(f"{s[m]:.3f} ± {s[m + '_std']:.3f}" for m in METRICS)
                     + f" | {s['seconds']:.2f} | {ratio} | {s['peak_mem_mb']:.0f} | {s['patch_bytes'] / 1e6:.2f} |"
                     + (cells if flux else "") + "".join(f" {s[k]:.3f} |" for k in asr))
    timed = sorted({k for s in table["summary"] for k in s if k.startswith("attack_s_")})
    if timed:
        lines += ["", "Attack wall time, mean seconds per row (finding the probes and generating them on the erased "
                  "and the base model; probes that do not need the erased model are found once per concept, on its "
                  "first row): " + ", ".join(f"{k[9:]} {statistics.fmean(s[k] for s in table['summary'] if k in s):.1f}"
                                             for k in timed)]
    lines += ["", "## Per concept", "", "| method | concept | UA | IRA | CRA | erase s |" + "".join(
        f" ASR {k[4:]} |" for k in asr), "|---|---|---|---|---|---|" + "---|" * len(asr)]
    lines += [f"| {r['method']} | {r['concept']} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS)
              + f" | {r['seconds']:.2f} |" + "".join(f" {r[k]:.3f} |" if k in r else " - |" for k in asr)
              for r in table["rows"]]
    return "\n".join(lines) + "\n"


def bar_chart(table: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary = table["summary"]
    x = np.arange(len(summary))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(summary) + 2), 3.5), dpi=120)
    for i, m in enumerate(METRICS):
        ax.bar(x + (i - 1) * 0.27, [s[m] for s in summary], 0.27, yerr=[s[f"{m}_std"] for s in summary],
               label=m.upper(), capsize=2)
    ax.set_xticks(x, [s["method"] for s in summary], rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.set_title(f"{table['model']}: mean over concepts")
    ax.legend(ncols=3, fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_outputs(out: Path, table: dict[str, Any], grids: dict[str, list]) -> None:
    write_text_atomic(json.dumps(table, indent=1), out / "compare.json")
    write_text_atomic(markdown(table), out / "compare.md")
    bar_chart(table, out / "compare.png")
    for concept, rows in grids.items():
        images = [im for _, ims in rows for im in ims]
        save_atomic(image_grid(images, cols=len(rows[0][1]), scale=3, row_labels=[m for m, _ in rows]),
                    out / f"grid-{concept.replace(' ', '-')}.png")
