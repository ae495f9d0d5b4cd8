"""The size-frontier picture of bench_frontier.py: one series per storage family, bytes against fidelity.

Reads the rows bench_frontier.py writes to frontier_minilm*.json ({"fidelity": [row, ...]}, each row
with family, weighting, embedding_bytes, ratio, fidelity, and for the chooser's picks chosen and target)
and draws every family of the run, anchors included, as one series: all its points as markers, its
best points (none smaller and at least as faithful) joined by a line. The chooser's picks are stars
in the colour of the family they belong to, labelled with the ratio asked for. Only matplotlib
(Agg backend): redrawing needs no model and no fit (`bench_frontier.py --plot-only JSON...`).

Several JSON files merge family by family: a family (the rows' "family" field) found in a later file
replaces that family's rows of the earlier ones, so a newer run with anchors and codebooks overrides
an older one's chooser and originals while the older one's factor grid stays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ORIGINAL = "fp32 original"
# Plotted families in legend order: (name, short name, colour, marker, line style); anchors dashed, ours solid.
FAMILIES = (
    ("plain int8 / int4 / int2 blocks (ours)", "plain blocks", "tab:olive", "s", "-"),
    ("SVD factors (U float, int8, int4)", "SVD", "tab:blue", "o", "-"),
    ("projective-clustering factors (k=3, 5, 8; U float, int8, int4)", "projective clustering", "tab:green", "o",
     "-"),
    ("codebooks (ours)", "codebooks", "tab:red", "D", "-"),
    ("ONNX Runtime: int8, 4-bit, 2-bit blocks (anchor)", "ONNX Runtime", "tab:gray", "s", "--"),
    ("FAISS PQ (anchor)", "FAISS PQ", "tab:purple", "^", "--"),
    ("FAISS OPQ (anchor)", "FAISS OPQ", "tab:orange", "v", "--"),
)
SHORT = {name: short for name, short, *_ in FAMILIES}
FLOOR = 0.5  # fidelity below this is drawn at the floor, pointing down, and counted in a note


def family_of(row: dict) -> str:
    """The plotted family of a row: what is stored, whoever chose it."""
    name = row["family"]
    if name.startswith("chooser"):
        name = row.get("chosen", "")
    if name.startswith("fp32"):
        return ORIGINAL
    # a row's name starts with its family's prefix (FAISS OPQ before FAISS PQ: the longer one first)
    for prefix, index in (("ORT", 4), ("FAISS OPQ", 6), ("FAISS PQ", 5), ("svd", 1), ("projclust", 2),
                          ("codebook", 3), ("plain", 0)):
        if name.startswith(prefix):
            return FAMILIES[index][0]
    return name  # a family this picture does not know yet: drawn after the known ones, in its own colour


def merge_runs(paths: list[Path]) -> list[dict]:
    """The fidelity rows of several frontier JSON files; a family in a later file replaces the earlier rows.
    Each row gets "source", the name of the file it came from."""
    rows: list[dict] = []
    for path in paths:
        new = [{**r, "source": Path(path).name} for r in json.loads(Path(path).read_text())["fidelity"]]
        families = {r["family"] for r in new}
        rows = [r for r in rows if r["family"] not in families] + new
    return rows


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that no smaller point matches in fidelity, by bytes."""
    front, best = [], -1.0
    for size, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if value > best:
            front.append((size, value))
            best = value
    return front


def plot_frontier(rows: list[dict], path: Path, note: str = "", weighting: str = "calibrated") -> Path:
    """Embedding bytes as written (MiB, log; x smaller on top) against mean cosine (logit scale).

    Rows of our factor families are drawn for one `weighting` (the chooser's; the other is in the JSON
    and RESULTS.md); rows without a weighting ("-") are always drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    original = next(r for r in rows if family_of(r) == ORIGINAL)
    table_mib = original["embedding_bytes"] / 2**20
    rows = [r for r in rows if r.get("weighting", "-") in ("-", weighting) and family_of(r) != ORIGINAL]
    fig, ax = plt.subplots(figsize=(11, 6.8))
    below = 0
    known = {name for name, *_ in FAMILIES}
    unknown = sorted({family_of(r) for r in rows} - known)
    extra = [(name, name, f"C{i % 10}", "X", "-.") for i, name in enumerate(unknown)]
    for name, _, colour, marker, style in (*FAMILIES, *extra):
        members = [r for r in rows if family_of(r) == name]
        if not members:
            continue
        points = [(r["embedding_bytes"] / 2**20, r["fidelity"]) for r in members]
        front = [(b, v) for b, v in _front(points) if v >= FLOOR]
        shown = [(b, max(v, FLOOR)) for b, v in points]
        below += sum(v < FLOOR for _, v in points)
        ax.plot([b for b, _ in front], [v for _, v in front], color=colour, linestyle=style, linewidth=1.6,
                marker=marker, markersize=6, label=name)
        ax.scatter([b for b, _ in shown], [v for _, v in shown], color=colour, marker=marker, s=22, alpha=0.35,
                   linewidths=0)
        for r in members:
            if r["family"].startswith("chooser"):
                size, value = r["embedding_bytes"] / 2**20, max(r["fidelity"], FLOOR)
                ax.scatter([size], [value], marker="*", s=260, color=colour, edgecolors="black", linewidths=0.8,
                           zorder=5)
                target = r.get("target") or round(r["ratio"])
                ax.annotate(f"{target:g}x", (size, value), textcoords="offset points", xytext=(-9, 7),
                            ha="right", fontsize=9, fontweight="bold")
    ax.scatter([], [], marker="*", s=200, color="white", edgecolors="black", label="what --target-ratio R picks (R)")
    ax.axvline(table_mib, color="black", linewidth=0.8, linestyle=":")
    ax.annotate("fp32 table\n(cosine 1)", (table_mib, 0.9999), textcoords="offset points", xytext=(-6, 0),
                ha="right", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("logit")
    ax.set_ylim(FLOOR * 0.995, 0.99995)
    ax.set_xlim(table_mib / 48, table_mib * 1.25)
    levels = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999]
    ax.yaxis.set_major_locator(FixedLocator(levels))
    ax.yaxis.set_major_formatter(FixedFormatter([f"{v:g}" for v in levels]))
    ax.yaxis.set_minor_formatter(NullFormatter())
    sizes = [1, 2, 5, 10, 20, 40]
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FixedFormatter([str(v) for v in sizes]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("word table as written in the file (MiB, log scale)")
    ax.set_ylabel("fidelity: mean cosine to the fp32 model (logit scale)")
    top = ax.secondary_xaxis("top", functions=(lambda b: table_mib / np.maximum(b, 1e-9),
                                               lambda r: table_mib / np.maximum(r, 1e-9)))
    top.set_xlabel("x smaller than the fp32 table")
    top.xaxis.set_major_locator(FixedLocator([1, 2, 4, 8, 16, 32]))
    top.xaxis.set_major_formatter(FixedFormatter(["1x", "2x", "4x", "8x", "16x", "32x"]))
    top.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="major", alpha=0.35)
    title = "MiniLM's word table (30522 x 384): bytes against sentence-embedding fidelity"
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=11)
    footer = "Lines join each family's best points; faint markers are all its points."
    if below:
        footer += f" {below} point(s) below cosine {FLOOR} are drawn on the bottom edge."
    sources: dict[str, set[str]] = {}
    for r in rows:
        if "source" in r:
            sources.setdefault(r["source"], set()).add(SHORT.get(family_of(r), family_of(r)))
    if len(sources) > 1:
        footer += "\nData: " + "; ".join(f"{', '.join(sorted(fams))} from {name}" for name, fams in sources.items())
    fig.text(0.01, 0.01, footer, fontsize=8, color="dimgray")
    ax.legend(fontsize=8.5, loc="upper left", framealpha=0.9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
