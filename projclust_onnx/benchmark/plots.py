"""PNG plots of a benchmark report and of an accuracy study (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(report: dict, path: Path) -> Path:
    """Per sequence length (one column each): p50 latency against batch size, one line per
    model, and below it each model's p50 as a ratio to the original's."""
    plt = _pyplot()
    seqs = sorted(report["grid"]["sequence_lengths"])
    fig, axes = plt.subplots(2, len(seqs), figsize=(4.5 * len(seqs), 6.5), squeeze=False, sharex=True)
    for col, seq in enumerate(seqs):
        top, bottom = axes[0][col], axes[1][col]
        for name, model in report["models"].items():
            keys = sorted((s["batch_size"], k) for k, s in model["latency"].items() if s["sequence_length"] == seq)
            batches = [b for b, _ in keys]
            top.plot(batches, [model["latency"][k]["p50_ms"] for _, k in keys], marker="o", label=name)
            bottom.plot(batches, [model["latency_ratio"][k] for _, k in keys], marker="o", label=name)
        top.set_title(f"sequence {seq}")
        top.set_ylabel("p50 latency (ms)")
        bottom.axhline(1.0, color="black", linewidth=0.8)
        bottom.set_ylabel("p50 / original's")
        bottom.set_xlabel("batch size")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"Latency under {report['provider']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy(rows: list[dict], baseline: float, path: Path, metric: str = "accuracy") -> Path:
    """Metric against embedding compression, one line per method; rows have method, compression, metric.

    A method label "family (variant)" gets its family's colour and its variant's line style.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    methods = sorted({r["method"] for r in rows})
    families = sorted({m.split(" (")[0] for m in methods})
    variants = sorted({m.partition(" (")[2].rstrip(")") for m in methods})
    styles, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    for method in methods:
        family, variant = method.split(" (")[0], method.partition(" (")[2].rstrip(")")
        f, v = families.index(family), variants.index(variant)
        points = sorted((r["compression"], r[metric]) for r in rows if r["method"] == method)
        ax.plot([100 * c for c, _ in points], [100 * a for _, a in points], label=method,
                color=plt.cm.tab10(f % 10), linestyle=styles[v % 4], marker=markers[v % 4])
    ax.axhline(100 * baseline, color="black", linestyle="--", label="original")
    ax.set_xlabel("embedding compression (%)")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
