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


def plot_frontier(rows: list[dict], path: Path, metric: str = "fidelity", zoom: float = 0.95) -> Path:
    """Embedding bytes (log x) against `metric`, one line per family over its budgets; ONNX Runtime's
    quantizers and the chooser as single points; uncalibrated variants dashed. Left: everything;
    right: the same above `zoom`, where the options compete."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(15, 6))
    lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        lines.setdefault((r["family"], r.get("weighting", "-")), []).append((r["embedding_bytes"], r[metric]))
    families = sorted({family for family, _ in lines})
    for ax in axes:
        for (family, weighting), points in sorted(lines.items()):
            points.sort()
            single = len(points) == 1 or family.startswith("chooser")
            style = dict(marker="*" if family.startswith("chooser") else ("s" if len(points) == 1 else "o"),
                         linestyle="none" if single else ("--" if weighting == "special tokens" else "-"),
                         markersize=11 if family.startswith(("chooser", "ORT", "fp32")) else 5)
            label = family if weighting in ("-", "calibrated") else f"{family} ({weighting})"
            ax.plot([b / 2**20 for b, _ in points], [v for _, v in points],
                    color=plt.cm.tab20(families.index(family) % 20), label=label, **style)
        ax.set_xscale("log")
        ax.set_xlabel("embedding bytes in the file (MiB, log)")
        ax.set_ylabel("mean cosine to the fp32 model" if metric == "fidelity" else metric)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_ylim(zoom, 1.0005)
    axes[1].set_title(f"above {zoom}")
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
