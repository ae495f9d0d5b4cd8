"""PNG plots of a benchmark report and of an accuracy study (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(report: dict, path: Path) -> Path:
    """p50 latency against batch size, one line per model, at the longest sequence."""
    plt = _pyplot()
    seq = max(report["grid"]["sequence_lengths"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, model in report["models"].items():
        points = sorted((s["batch_size"], s["p50_ms"]) for s in model["latency"].values()
                        if s["sequence_length"] == seq)
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"p50 latency (ms), sequence {seq}")
    ax.set_title(f"Latency under {report['provider']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy(rows: list[dict], baseline: float, path: Path, metric: str = "accuracy") -> Path:
    """Metric against embedding compression, one line per method; rows have method, compression, metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({r["method"] for r in rows}):
        points = sorted((r["compression"], r[metric]) for r in rows if r["method"] == method)
        ax.plot([100 * c for c, _ in points], [100 * a for _, a in points], marker="o", label=method)
    ax.axhline(100 * baseline, color="black", linestyle="--", label="original")
    ax.set_xlabel("embedding compression (%)")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
