"""The ASR table of docs/attacks.md from `compare_minicanvas.py --attacks all` runs: per method, UA / IRA / CRA
(and their difference to the base model on the same concepts), erase time, ASR per attack, the worst attack per
concept (its mean and maximum over concepts), and the Pareto view (worst-attack ASR against CRA - base).

    python benchmarks/attack_table.py runs/robust-a runs/robust-b [--methods base,hirm,...] [--plot docs/img/x.png]
"""

import argparse
import json
import statistics
from pathlib import Path

ATTACKS = ["paraphrase", "embedding", "ringabell", "unlearndiff", "cce"]


def load_rows(folders: list[str]) -> dict[tuple[str, str], dict]:
    """(method, concept) -> its row; a later line of rows.jsonl (the row with more columns) wins."""
    rows: dict[tuple[str, str], dict] = {}
    for folder in folders:
        for line in (Path(folder) / "rows.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)["row"]
                rows[row["method"], row["concept"]] = {**rows.get((row["method"], row["concept"]), {}), **row}
    return rows


def summarise(rows: dict[tuple[str, str], dict], methods: list[str]) -> list[dict]:
    concepts = sorted({c for m, c in rows if m == "base"})
    out = []
    for m in methods:
        have = [c for c in concepts if (m, c) in rows and all(f"asr_{a}" in rows[m, c] for a in ATTACKS)]
        if not have:
            continue
        r = [rows[m, c] for c in have]
        b = [rows["base", c] for c in have]
        worst = [max(x[f"asr_{a}"] for a in ATTACKS) for x in r]
        prompt = [max(x[f"asr_{a}"] for a in ATTACKS if a != "embedding") for x in r]
        out.append({
            "method": m, "concepts": have, "n": len(have),
            "ua": statistics.mean(x["ua"] for x in r), "ira": statistics.mean(x["ira"] for x in r),
            "cra": statistics.mean(x["cra"] for x in r),
            "ira_d": statistics.mean(x["ira"] - y["ira"] for x, y in zip(r, b, strict=True)),
            "cra_d": statistics.mean(x["cra"] - y["cra"] for x, y in zip(r, b, strict=True)),
            "worst_cra_d": min(min(x["ira"] - y["ira"], x["cra"] - y["cra"]) for x, y in zip(r, b, strict=True)),
            "seconds": statistics.median(x["seconds"] for x in r),
            **{a: statistics.mean(x[f"asr_{a}"] for x in r) for a in ATTACKS},
            "worst": statistics.mean(worst), "worst_max": max(worst), "prompt": statistics.mean(prompt),
            "per_concept": {c: (x["ua"], x["ira"], x["cra"], [x[f"asr_{a}"] for a in ATTACKS])
                            for c, x in zip(have, r, strict=True)},
            "attack_s": {a: statistics.median(x[f"attack_s_{a}"] for x in r) for a in ATTACKS},
        })
    return out


def markdown(summary: list[dict]) -> str:
    head = ("| method | UA | IRA | CRA | IRA - base | CRA - base | erase s | " + " | ".join(ATTACKS)
            + " | worst prompt attack | worst attack (mean / max) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summary:
        lines.append(f"| {s['method']} | {s['ua']:.3f} | {s['ira']:.3f} | {s['cra']:.3f} | {s['ira_d']:+.3f} | "
                     f"{s['cra_d']:+.3f} | {s['seconds']:.0f} | " + " | ".join(f"{s[a]:.3f}" for a in ATTACKS)
                     + f" | {s['prompt']:.3f} | {s['worst']:.3f} / {s['worst_max']:.2f} |")
    lines += ["", "| method | concept | UA | IRA | CRA | " + " | ".join(ATTACKS) + " |",
              "|---|---|---|---|---|" + "---|" * len(ATTACKS)]
    for s in summary:
        for c, (ua, ira, cra, asr) in s["per_concept"].items():
            lines.append(f"| {s['method']} | {c} | {ua:.2f} | {ira:.2f} | {cra:.2f} | "
                         + " | ".join(f"{x:.2f}" for x in asr) + " |")
    times = {a: statistics.median(s["attack_s"][a] for s in summary) for a in ATTACKS}
    lines += ["", "Attack wall time per erased model (median over rows): "
              + ", ".join(f"{a} {t:.1f} s" for a, t in times.items())]
    return "\n".join(lines)


def plot(summary: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.4))
    markers = "osD^vP*Xh<>p"
    for i, s in enumerate(summary):
        label = f"{s['method']} (UA {s['ua']:.2f}" + (f", {s['n']} concepts)" if s["n"] < 8 else ")")
        ax.scatter([(s["ira_d"] + s["cra_d"]) / 2], [s["worst"]], s=45, marker=markers[i % len(markers)],
                   label=label, alpha=0.85)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.axhline(0.05, color="grey", lw=0.8, ls="--")
    ax.axvline(-0.03, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("locality: mean of IRA - base and CRA - base (right is better)")
    ax.set_ylabel("worst-attack ASR, mean over concepts (lower is better)")
    ax.set_title("mini-SD, 8 concepts, 5 attacks, 2 seeds per probe")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folders", nargs="+")
    p.add_argument("--methods", default="")
    p.add_argument("--plot", default="")
    a = p.parse_args()
    rows = load_rows(a.folders)
    methods = a.methods.split(",") if a.methods else list(dict.fromkeys(m for m, _ in rows))
    summary = summarise(rows, methods)
    print(markdown(summary))
    if a.plot:
        plot(summary, a.plot)


if __name__ == "__main__":
    main()
