"""`hirm report RUN_DIR`: one self-contained HTML page and one Markdown page for a `hirm eval --protocol` run.

The HTML embeds every image as a base64 data URI and styles itself with inline CSS, so the single file can be
mailed or archived and opens offline. The Markdown references thumbnails written under RUN_DIR/report/, so it
renders on GitHub next to the run folder. Nudity images are blurred inside NudeNet's exposed boxes by default.

A run folder is input like any other file (docs/security.md): names read from it (variants, record keys) must be
plain file names, no path leads outside the folder (symlinks included), every string is escaped in both pages,
values of the wrong type show as missing, and anything else wrong is one HirmError. Only thumbnails this command
wrote (listed in report/thumbnails.json) are ever deleted.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageFilter

from hirm.errors import HirmError
from hirm.eval.protocols import PROTOCOLS
from hirm.eval.protocols.runner import RUN_FORMAT_VERSION, image_path, record_path
from hirm.eval.protocols.unlearncanvas import find_concept
from hirm.images import save_atomic, write_text_atomic
from hirm.io import check_format_version, inside, safe_name

MAX_JSON_BYTES = 64 << 20  # a run folder's JSON files are small; a bigger one was not written by hirm
THUMBNAILS = "thumbnails.json"  # report/THUMBNAILS: the names of the thumbnails the last report wrote

THUMB = 256  # longest side of a report image, in pixels
NONE = "–"  # a number the run did not produce

NUDITY_SETS = ("Ring-A-Bell-16", "Ring-A-Bell-77", "MMA-Diffusion", "I2P")
# The paper's reference numbers (HiRM, ICLR 2026), as plain data.
PAPER: dict[str, Any] = {
    # SD1.4: nudity rate % by NudeNet on each of NUDITY_SETS (lower is better), then COCO CLIP score
    "nudity": {
        "SalUn": (0.00, 2.11, 0.90, 0.57, 0.293),
        "RECE": (1.05, 1.05, 0.40, 0.57, 0.277),
        "EDiff": (2.11, 1.05, 4.10, 0.85, 0.307),
        "HiRM-R": (0.00, 0.00, 8.00, 0.96, 0.304),
        "HiRM-S": (1.05, 0.00, 3.30, 0.66, 0.306),
    },
    # UnlearnCanvas-finetuned SD1.5: UA / IRA / CRA %, per erased domain (higher is better)
    "unlearncanvas": {
        "style": {
            "ESD": (98.58, 80.97, 93.96), "MACE": (54.69, 89.85, 98.76), "SalUn": (86.26, 90.39, 95.09),
            "Diff-Q": (96.40, 93.91, 97.12), "HiRM-R": (95.50, 89.31, 97.91), "HiRM-S": (96.20, 92.67, 97.75),
        },
        "object": {
            "ESD": (92.15, 55.78, 44.22), "MACE": (67.65, 98.52, 97.38), "SalUn": (86.91, 96.35, 99.58),
            "Diff-Q": (94.00, 98.37, 96.20), "HiRM-R": (93.20, 98.18, 92.57), "HiRM-S": (96.20, 97.77, 96.85),
        },
    },
}


@dataclass
class _Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""
    ours: set[int] = field(default_factory=set)  # indices of rows holding this run's numbers (highlighted)
    text: bool = False  # all columns text, aligned left (numbers align right)


@dataclass
class _Item:
    key: str
    prompt: str
    detail: str  # key, seed, guidance
    cells: list[tuple[Image.Image | None, str]]  # per variant: thumbnail (None if missing) and its scores


def write_report(run_dir: Path, blur: bool = True, sample: int = 8) -> tuple[Path, Path]:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/report.md; return both paths."""
    run_dir = Path(run_dir)
    if sample < 0:
        raise HirmError(f"--sample {sample}: pass the number of prompts to show (0 or more)")
    try:
        return _write_report(run_dir, blur, sample)
    except HirmError:  # already names the problem and the fix
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError, RecursionError) as e:
        # a last line of defence: every field is checked, but a run folder can be edited in ways nobody foresaw
        raise HirmError(f"{run_dir} holds data hirm did not write ({type(e).__name__}: {str(e)[:120]}): re-run "
                        "the same `hirm eval` command to rewrite the run folder") from e


def _write_report(run_dir: Path, blur: bool, sample: int) -> tuple[Path, Path]:
    run, metrics = _load_run(run_dir)
    base = _load_records(run_dir, run["variants"][0])
    domain = _canvas_domain(run) if run["protocol"] == "unlearncanvas" else None
    tables = [_settings_table(run), *_metric_tables(run, metrics), *_paper_tables(run, metrics, domain)]
    items = _sample(run_dir, run, base, sample, blur)
    page = _html(run, tables, items, blur)
    md = _markdown(run_dir, run, tables, items, blur)
    return write_text_atomic(page, run_dir / "report.html"), write_text_atomic(md, run_dir / "report.md")


# --- loading ---------------------------------------------------------------------------------------------------

def _read_json(run_dir: Path, path: Path) -> Any:
    """A JSON file of the run folder (never one a symlink leads to elsewhere)."""
    inside(run_dir, path)
    redo = "re-run the same `hirm eval` command to rewrite it"
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise HirmError(f"{path} is larger than any file hirm writes there: {redo}")
        return json.loads(path.read_bytes().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise HirmError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}): {redo}") from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise HirmError(f"{path} is not valid JSON ({type(e).__name__}): {redo}") from None
    except OSError as e:
        raise HirmError(f"cannot read {path} ({e.strerror or e}): {redo}") from None


def _dict(value: Any) -> dict:
    """`value` where a JSON object is expected, else an empty one (a field of the wrong type shows as missing)."""
    return value if isinstance(value, dict) else {}


def _load_run(run_dir: Path) -> tuple[dict, dict]:
    if not (run_dir / "run.json").is_file():
        raise HirmError(f"{run_dir} has no run.json: pass the --out folder of a `hirm eval --protocol` run")
    run = _read_json(run_dir, run_dir / "run.json")
    if isinstance(run, dict) and "format_version" in run:  # a newer hirm's run folder: refused, not misread
        check_format_version(run["format_version"], RUN_FORMAT_VERSION, f"{run_dir}/run.json is run folder format")
    variants = run.get("variants") if isinstance(run, dict) else None
    if not isinstance(run, dict) or not isinstance(run.get("protocol"), str) or run["protocol"] not in PROTOCOLS \
            or not variants or not isinstance(variants, list):
        run = run if isinstance(run, dict) else {}
        raise HirmError(f"{run_dir}/run.json names protocol {run.get('protocol')!r:.60} with variants "
                        f"{run.get('variants')!r:.80}; `hirm report` reads runs of {', '.join(PROTOCOLS)}: pass the "
                        "--out folder of a `hirm eval --protocol` run")
    for v in variants:  # variant names become folder and file names
        safe_name(v, f"{run_dir}/run.json: variant")
    if len(set(variants)) != len(variants) or len(variants) > 16:
        raise HirmError(f"{run_dir}/run.json: variants {variants!r:.80} repeat a name or are too many")
    for k in ("model", "patch", "patch_id", "prompts_file"):
        if run.get(k) is not None and not isinstance(run[k], str):
            raise HirmError(f"{run_dir}/run.json: {k} is a {type(run[k]).__name__}, not a string: re-run the same "
                            "`hirm eval` command into a new folder")
    run["settings"] = _dict(run.get("settings"))
    if not (run_dir / "metrics.json").is_file():
        raise HirmError(f"{run_dir} has no metrics.json: the run did not finish; re-run the same `hirm eval` "
                        "command to resume it")
    metrics = _read_json(run_dir, run_dir / "metrics.json")
    if not isinstance(metrics, dict):
        raise HirmError(f"{run_dir}/metrics.json is not a JSON object: re-run the same `hirm eval` command to "
                        "rewrite it")
    metrics["variants"] = {v: _dict(m) for v, m in _dict(metrics.get("variants")).items()}
    return run, metrics


def _load_records(run_dir: Path, variant: str) -> dict[str, dict]:
    pattern = record_path(run_dir, variant, "*")  # the runner's layout, every key
    if not pattern.parent.is_dir():
        return {}
    inside(run_dir, pattern.parent)
    records = {}
    for p in sorted(pattern.parent.glob(pattern.name)):
        key = safe_name(p.stem, f"{run_dir}: record")
        record = _read_json(run_dir, p)
        if not isinstance(record, dict):
            raise HirmError(f"{p} is not a JSON object: re-run the same `hirm eval` command to rewrite it")
        records[key] = record
    return records


def _canvas_domain(run: dict) -> str | None:
    """Whether the erased UnlearnCanvas concept is a style or an object (None: no concept)."""
    concept = run["settings"].get("concept")
    return None if concept is None else find_concept(str(concept))[0]


# --- tables ----------------------------------------------------------------------------------------------------

def _real(v: Any) -> float | None:
    """A number read from a file, or None (missing, or not a number: shown as missing)."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _pct(v: Any) -> str:
    v = _real(v)
    return NONE if v is None else f"{100 * v:.2f}%"


def _num(v: Any, digits: int) -> str:
    v = _real(v)
    return NONE if v is None else f"{v:.{digits}f}"


def _int(v: Any) -> str:
    v = _real(v)
    return NONE if v is None else str(int(v))


def _settings_table(run: dict) -> _Table:
    rows = [["protocol", run["protocol"]], ["model", str(run.get("model"))],
            ["patch", run.get("patch") or "none (base model only)"],
            *([["patch id", str(run["patch_id"])]] if run.get("patch_id") else []),
            ["variants", ", ".join(run["variants"])], ["prompts", str(run.get("n_prompts", NONE))],
            ["prompts file", run.get("prompts_file") or "built in"]]
    rows += [[k, NONE if v is None else json.dumps(v) if isinstance(v, (dict, list)) else str(v)]
             for k, v in (run.get("settings") or {}).items()]
    return _Table("Run", ["setting", "value"], rows, text=True)


def _metric_tables(run: dict, metrics: dict) -> list[_Table]:
    per = metrics.get("variants", {})
    variants = [v for v in run["variants"] if v in per] or list(per)
    protocol = run["protocol"]
    if protocol == "nudity":
        rows = [[v, _pct(per[v].get("nudity_rate")), _int(per[v].get("n_nude")), _int(per[v].get("n_images"))]
                for v in variants]
        classes = sorted({str(c) for v in variants for c in _dict(per[v].get("per_class"))})
        counts = [[c, *(_int(_dict(per[v].get("per_class")).get(c, 0)) for v in variants)] for c in classes]
        threshold = _real(run["settings"].get("threshold"))
        return [_Table("Nudity rate (lower is better)", ["variant", "nudity rate", "nude images", "images"], rows,
                       "An image is nude when NudeNet finds an exposed class above the detector threshold"
                       + (f" ({threshold})." if threshold is not None else ".")),
                _Table("Images per exposed class", ["class", *variants],
                       counts or [["(none)", *["0"] * len(variants)]])]
    if protocol == "coco":
        has_fid = any("fid" in per[v] for v in variants)
        rows = [[v, _num(per[v].get("clip_score"), 4), *([_num(per[v].get("fid"), 2)] if has_fid else []),
                 _int(per[v].get("n_images"))] for v in variants]
        note = ""
        if metrics.get("fid") is not None:
            note = f"FID of the erased images against the base images: {_num(metrics['fid'], 2)}."
        elif "fid" in metrics:
            note = f"FID was not computed ({metrics.get('fid_note') or 'no reason recorded'})."
        return [_Table("COCO prompts (higher CLIP score is better)",
                       ["variant", "CLIP score", *(["FID"] if has_fid else []), "images"], rows, note)]
    keys = [k for k in ("ua", "ira", "cra") if any(k in per[v] for v in variants)]
    rows = [[v, *(_pct(per[v].get(k)) for k in keys), _pct(per[v].get("style_acc")),
             _pct(per[v].get("object_acc")), _int(per[v].get("n_images"))] for v in variants]
    return [_Table("UnlearnCanvas (higher is better)",
                   ["variant", *(k.upper() for k in keys), "style accuracy", "object accuracy", "images"], rows,
                   "" if keys else "No concept was set, so UA/IRA/CRA were not computed.")]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _paper_tables(run: dict, metrics: dict, domain: str | None) -> list[_Table]:
    per = metrics.get("variants", {})
    ours = [v for v in run["variants"] if v in per]
    protocol = run["protocol"]
    source = "Reference rows: the HiRM paper (ICLR 2026)"
    if protocol == "coco":
        rows = [[m, f"{r[4]:.3f}"] for m, r in PAPER["nudity"].items()]
        rows += [[f"this run ({v})", _num(per[v].get("clip_score"), 4)] for v in ours]
        return [_Table("Paper comparison: COCO CLIP score (higher is better)", ["method", "CLIP score"], rows,
                       f"{source}, SD1.4. The run's score is comparable when it uses the same prompts and CLIP model.",
                       set(range(len(PAPER["nudity"]), len(rows))))]
    if protocol == "nudity":
        prompt_set = str((run.get("settings") or {}).get("prompt_set") or "")
        col = next((i for i, s in enumerate(NUDITY_SETS) if _norm(s) == _norm(prompt_set)), None)
        extra = col is None  # the run's prompts are none of the paper's sets: give them their own column
        header = ["method", *NUDITY_SETS, *(["this prompt set"] if extra else []), "COCO CLIP"]
        rows = [[m, *(f"{x:.2f}%" for x in r[:4]), *([NONE] if extra else []), f"{r[4]:.3f}"]
                for m, r in PAPER["nudity"].items()]
        for v in ours:
            cells = [NONE] * (len(NUDITY_SETS) + extra)
            cells[len(NUDITY_SETS) if extra else col] = _pct(per[v].get("nudity_rate"))
            rows.append([f"this run ({v})", *cells, NONE])
        return [_Table("Paper comparison: nudity rate by NudeNet (lower is better)", header, rows,
                       f"{source}, SD1.4; COCO CLIP is the same methods' CLIP score on COCO prompts. The run's rate "
                       "is comparable when its prompts, seeds and NudeNet threshold match the paper's.",
                       set(range(len(PAPER["nudity"]), len(rows))))]
    tables = []
    for d in [domain] if domain else ["style", "object"]:
        paper = PAPER["unlearncanvas"][d]
        rows = [[m, *(f"{x:.2f}%" for x in r)] for m, r in paper.items()]
        if domain:
            rows += [[f"this run ({v})", *(_pct(per[v].get(k)) for k in ("ua", "ira", "cra"))] for v in ours]
        what = "a style" if d == "style" else "an object"
        tables.append(_Table(f"Paper comparison: UnlearnCanvas, erasing {what} (higher is better)",
                             ["method", "UA", "IRA", "CRA*"], rows,
                             f"{source}, UnlearnCanvas-finetuned SD1.5. *CRA values are derived from the paper's "
                             "reported averages rather than read from one of its tables.",
                             set(range(len(paper), len(rows)))))
    return tables


# --- images ----------------------------------------------------------------------------------------------------

def _blur_exposed(image: Image.Image, scores: dict) -> Image.Image:
    """A copy with a strong Gaussian blur and a black outline over each box of an exposed class."""
    exposed = {c for c in _dict(scores.get("exposed")) if isinstance(c, str)}
    boxes = []
    detections = scores.get("detections")
    for det in detections if isinstance(detections, list) else []:
        if not isinstance(det, dict) or det.get("class") not in exposed:
            continue
        box = det.get("box")
        if not isinstance(box, list) or len(box) != 4 or any(_real(b) is None for b in box):
            continue  # not a box: nothing to blur there
        x, y, w, h = (_real(b) for b in box)  # NudeNet: left, top, width, height in pixels
        x0, y0 = max(0, int(x)), max(0, int(y))
        x1, y1 = min(image.width, round(x + w)), min(image.height, round(y + h))
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    out = image.convert("RGB")  # always a copy, never the caller's image
    for box in boxes:
        radius = max(6, max(box[2] - box[0], box[3] - box[1]) // 3)  # strong: the box turns to colour blobs
        out.paste(out.crop(box).filter(ImageFilter.GaussianBlur(radius)), box[:2])
    draw = ImageDraw.Draw(out)  # outlines after all blurs, so an overlapping box does not smear one
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline="black", width=max(1, min(image.size) // 128))
    return out


def _thumb(image: Image.Image) -> Image.Image:
    """Long side at most THUMB: large images shrink smoothly, small ones grow by a whole factor and stay crisp."""
    w, h = image.size
    if max(w, h) > THUMB:
        small = image.copy()
        small.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
        return small
    f = THUMB // max(w, h)
    return image.resize((w * f, h * f), Image.Resampling.NEAREST) if f > 1 else image


def _score_text(protocol: str, record: dict) -> str:
    scores = _dict(record.get("scores"))
    if protocol == "nudity":
        exposed = {str(c): _real(s) or 0.0 for c, s in _dict(scores.get("exposed")).items()}
        if not scores.get("nude") or not exposed:
            return "nude" if scores.get("nude") else "not nude"
        return "nude: " + ", ".join(f"{c} {s:.2f}" for c, s in sorted(exposed.items(), key=lambda t: -t[1]))
    if protocol == "coco":
        return f"CLIP {_num(scores.get('clip_score'), 4)}"
    return (f"style {record.get('style')} → judged {scores.get('pred_style')}; "
            f"object {record.get('object')} → judged {scores.get('pred_object')}")


def _sample(run_dir: Path, run: dict, base: dict[str, dict], sample: int, blur: bool) -> list[_Item]:
    keys = sorted(base)
    if run["protocol"] == "nudity":  # nude base images first: they show what the erasure changed
        keys.sort(key=lambda k: not _dict(base[k].get("scores")).get("nude"))
    items = []
    for key in keys[:sample]:
        cells = []
        for v in run["variants"]:
            rec_path, img_path = record_path(run_dir, v, key), image_path(run_dir, v, key)
            record = base[key] if v == run["variants"][0] else (
                _dict(_read_json(run_dir, rec_path)) if rec_path.is_file() else {})
            scores = _dict(record.get("scores"))
            if not img_path.is_file():
                cells.append((None, "image missing"))
                continue
            image = _open_image(run_dir, img_path)
            if blur and run["protocol"] == "nudity":
                image = _blur_exposed(image, scores)
            cells.append((_thumb(image), _score_text(run["protocol"], record) if record else "no record"))
        rec = base[key]
        detail = f"{key} · seed {rec.get('seed')}" + (f" · guidance {rec['guidance']}" if "guidance" in rec else "")
        items.append(_Item(key, str(rec.get("prompt", "")), detail, cells))
    return items


def _open_image(run_dir: Path, path: Path) -> Image.Image:
    """An image of the run folder, decoded whole: a truncated or corrupt file, a decompression bomb or a link
    out of the folder is one HirmError."""
    inside(run_dir, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise HirmError(f"{path} is not a readable image ({str(e)[:100]}): re-run the same `hirm eval` command to "
                        "redo it") from None


def _sample_note(run: dict, items: list[_Item], blur: bool) -> str:
    note = f"{len(items)} of {run.get('n_prompts', '?')} prompts"
    if run["protocol"] == "nudity":
        note += ", nude base images first"
        note += "; exposed regions are blurred and outlined" if blur else "; images unblurred (--no-blur)"
    return note + "."


# --- HTML ------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1140px;
padding:0 16px;color:#1d1d1f;line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f4}th:first-child,td:first-child{text-align:left}
tr.ours td{background:#fff6d6;font-weight:600}
p.note{color:#555;font-size:13px;margin:4px 0 0}
table.text td,table.text th,table.grid td,table.grid th{text-align:left}table.grid td{vertical-align:top}
table.text td{overflow-wrap:anywhere;max-width:760px}
table.grid td.prompt{width:300px;overflow-wrap:anywhere;font-size:14px}
table.grid img{display:block;image-rendering:auto}
.key{color:#777;font-size:12px}.cap{font-size:12px;color:#444;max-width:256px;overflow-wrap:anywhere}
"""


def _png_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _html_table(t: _Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in t.header)
    body = "".join(("<tr class=\"ours\">" if i in t.ours else "<tr>") + "".join(f"<td>{e(c)}</td>" for c in row)
                   + "</tr>" for i, row in enumerate(t.rows))
    note = f'<p class="note">{e(t.note)}</p>' if t.note else ""
    table = '<table class="text">' if t.text else "<table>"
    return f"<h2>{e(t.title)}</h2>\n{table}<tr>{head}</tr>{body}</table>{note}\n"


def _html_grid(run: dict, items: list[_Item], blur: bool) -> str:
    e = html.escape
    if not items:
        return "<h2>Samples</h2><p>No images to show.</p>"
    head = "<th>prompt</th>" + "".join(f"<th>{e(v)}</th>" for v in run["variants"])
    rows = []
    for it in items:
        cells = [f'<td class="prompt">{e(it.prompt)}<br><span class="key">{e(it.detail)}</span></td>']
        for v, (image, caption) in zip(run["variants"], it.cells, strict=True):
            img = (f'<img src="{_png_uri(image)}" width="{image.width}" height="{image.height}" '
                   f'alt="{e(v)} {e(it.key)}">' if image is not None else "")
            cells.append(f'<td>{img}<div class="cap">{e(caption)}</div></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<h2>Samples</h2><p class=\"note\">{e(_sample_note(run, items, blur))}</p>\n"
            f'<table class="grid"><tr>{head}</tr>\n' + "\n".join(rows) + "</table>\n")


def _title(run: dict) -> str:
    return f"HiRM evaluation: {run['protocol']} on {run.get('model')}"


def _html(run: dict, tables: list[_Table], items: list[_Item], blur: bool) -> str:
    e = html.escape
    sub = f"patch {run.get('patch') or 'none'} · variants {', '.join(run['variants'])}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(_title(run))}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{e(_title(run))}</h1><p class=\"note\">{e(sub)}</p>\n"
            + "".join(_html_table(t) for t in tables) + _html_grid(run, items, blur) + "</body></html>\n")


# --- Markdown --------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    """Escape HTML (prompts are user data) and the Markdown characters that would break a table or format text."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|~#])", r"\\\1", text)


def _md_table(t: _Table) -> str:
    lines = [f"## {t.title}", "", "| " + " | ".join(_md_cell(h) for h in t.header) + " |",
             "|" + "|".join([":--"] + [":--" if t.text else "--:"] * (len(t.header) - 1)) + "|"]
    for i, row in enumerate(t.rows):
        cells = [_md_cell(c) for c in row]
        lines.append("| " + " | ".join(f"**{c}**" if i in t.ours else c for c in cells) + " |")
    return "\n".join(lines) + (f"\n\n{_md_cell(t.note)}" if t.note else "") + "\n"


def _old_thumbnails(run_dir: Path, folder: Path) -> list[Path]:
    """The thumbnails an earlier report wrote (maybe with another --sample): the names it recorded, and only
    plain PNG files inside the folder. Files hirm did not write there are never touched."""
    listing = folder / THUMBNAILS
    if not listing.is_file():
        return []
    try:
        names = _read_json(run_dir, listing)
    except HirmError:
        return []
    old = []
    for name in names if isinstance(names, list) else []:
        try:
            safe_name(name, "thumbnail")
        except HirmError:
            continue
        path = folder / name
        if name.endswith(".png") and path.is_file() and not path.is_symlink():
            old.append(path)
    return old


def _markdown(run_dir: Path, run: dict, tables: list[_Table], items: list[_Item], blur: bool) -> str:
    folder = run_dir / "report"
    if folder.exists() or folder.is_symlink():
        inside(run_dir, folder)  # a report/ link out of the run folder: refused, nothing written or deleted there
    old = _old_thumbnails(run_dir, folder)
    written: list[str] = []
    try:
        page = _markdown_page(run, tables, items, blur, folder, written)
    except BaseException:
        if written:  # keep every name hirm wrote listed, so the next report can remove them
            with contextlib.suppress(HirmError):
                write_text_atomic(json.dumps(sorted({p.name for p in old} | set(written))), folder / THUMBNAILS)
        raise
    if written or old:
        write_text_atomic(json.dumps(written), folder / THUMBNAILS)
    for path in old:
        if path.name not in written:
            path.unlink(missing_ok=True)
    return page


def _markdown_page(run: dict, tables: list[_Table], items: list[_Item], blur: bool, folder: Path,
                   written: list[str]) -> str:
    parts = [f"# {_md_cell(_title(run))}", "", *(_md_table(t) for t in tables), "## Samples", ""]
    if not items:
        return "\n".join([*parts, "No images to show.", ""])
    parts += [_md_cell(_sample_note(run, items, blur)), "",
              "| prompt | " + " | ".join(_md_cell(v) for v in run["variants"]) + " |",
              "|" + "|".join([":--"] * (len(run["variants"]) + 1)) + "|"]
    for it in items:
        cells = [f"{_md_cell(it.prompt)}<br>{_md_cell(it.detail)}"]
        for v, (image, caption) in zip(run["variants"], it.cells, strict=True):
            if image is None:
                cells.append(_md_cell(caption))
                continue
            name = f"{it.key}-{v}.png"  # key and variant are plain names (checked on loading)
            save_atomic(image, folder / name)
            written.append(name)
            cells.append(f"![{_md_cell(v)} {_md_cell(it.key)}](report/{quote(name)})<br>{_md_cell(caption)}")
        parts.append("| " + " | ".join(cells) + " |")
    return "\n".join([*parts, ""])
