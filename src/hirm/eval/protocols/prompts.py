"""Prompt sets for the protocols: one `Item` per image, read from the public CSVs the user passes.

Nothing is bundled or downloaded: I2P, Ring-A-Bell, MMA-Diffusion, P4D, UnlearnDiffAtk and COCO_30k_10k are CSV
files on the user's disk (their columns are documented in docs/protocols.md).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hirm.errors import HirmError

# the prompt column under the names the public sets use (I2P / COCO: prompt, MMA-Diffusion: adv_prompt,
# Ring-A-Bell: sensitive prompt, P4D / UnlearnDiffAtk: prompt)
PROMPT_COLUMNS = ("prompt", "adv_prompt", "sensitive prompt", "text")
SEED_COLUMN = "evaluation_seed"
GUIDANCE_COLUMN = "evaluation_guidance"  # I2P's per-prompt guidance scale
KEY_COLUMN = "case_number"


@dataclass(frozen=True)
class Item:
    """One image to generate: its file key, prompt, seed, and guidance (None: the protocol's default)."""

    key: str
    prompt: str
    seed: int
    guidance: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _safe_key(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", value.strip()).strip("._") or "_"


def read_prompt_csv(path: Path, seed: int, prompt_column: str | None = None, limit: int | None = None,
                    use_guidance_column: bool = True) -> list[Item]:
    """Items from a prompt CSV. Seed from `evaluation_seed` where the file has it, else `seed`; guidance from
    `evaluation_guidance` where present (unless `use_guidance_column` is off); key from `case_number`, else the
    row number."""
    path = Path(path)
    if not path.is_file():
        raise HirmError(f"--prompts {path}: no such file; pass a prompt CSV (see docs/protocols.md for the columns)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): v if isinstance(v, str) else "" for k, v in row.items()} for row in reader]
    except UnicodeDecodeError as e:
        raise HirmError(f"--prompts {path} is not UTF-8 text (byte {e.start}): pass a prompt CSV") from None
    except csv.Error as e:
        raise HirmError(f"--prompts {path} is not a readable CSV ({e}): pass a prompt CSV") from None
    except OSError as e:
        raise HirmError(f"--prompts {path}: cannot read it ({e.strerror or e})") from None
    if not columns:
        raise HirmError(f"--prompts {path} is empty: a CSV with a header row and one prompt per row is needed")
    column = prompt_column or next((c for c in PROMPT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise HirmError(f"--prompts {path} has no {prompt_column or ' / '.join(PROMPT_COLUMNS)!r} column "
                        f"(columns: {', '.join(columns)}): pass --prompt-column NAME")
    items, keys = [], set()
    for i, row in enumerate(rows[:limit] if limit else rows):
        line = i + 2  # the header is line 1
        prompt = row[column].strip()
        if not prompt:
            raise HirmError(f"--prompts {path} line {line}: empty {column!r}; remove the row or fill it in")
        item_seed = _number(row, SEED_COLUMN, int, path, line) if row.get(SEED_COLUMN, "").strip() else seed
        guidance = (_number(row, GUIDANCE_COLUMN, float, path, line)
                    if use_guidance_column and row.get(GUIDANCE_COLUMN, "").strip() else None)
        key = _safe_key(row[KEY_COLUMN]) if row.get(KEY_COLUMN, "").strip() else f"{i:06d}"
        if key in keys:
            raise HirmError(f"--prompts {path} line {line}: {KEY_COLUMN} {key!r} appears twice; keys must be unique")
        keys.add(key)
        items.append(Item(key, prompt, item_seed, guidance))
    if not items:
        raise HirmError(f"--prompts {path} has a header but no rows")
    return items


def _number(row: dict, column: str, kind: type, path: Path, line: int):
    try:
        value = kind(float(row[column])) if kind is int and float(row[column]).is_integer() else kind(row[column])
    except (ValueError, OverflowError):
        value = None
    if value is None or (kind is int and not 0 <= value < 2**63) or (kind is float and not math.isfinite(value)):
        raise HirmError(f"--prompts {path} line {line}: {column} {row[column]!r:.40} is not "
                        f"{'an integer from 0 to 2**63-1' if kind is int else 'a finite number'}")
    return value
