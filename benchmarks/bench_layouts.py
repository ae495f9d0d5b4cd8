"""Runtime layouts of the k-branch subgraph under ONNX Runtime: original vs grouped vs onehot.

MiniLM (feature-extraction export) compressed by 40% with k=5 in each layout; p50 latency
at each batch/sequence point, the three models interleaved in one run, as ratios to the
original. CUDA provider when onnxruntime offers it, else CPU.

    python benchmarks/bench_layouts.py [--batch-sizes 1 8 32] [--sequence-lengths 16 128] [--repeats 30]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import append_results, markdown_table
from projclust_onnx.passes import LAYOUTS

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.runner import measure_latency, open_session, resolve_providers
from projclust_onnx.bundled import bundled_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--sequence-lengths", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    providers = resolve_providers("auto")
    with tempfile.TemporaryDirectory() as tmp:
        original = ProjClustCompressor.from_pretrained(bundled_model_path(), task="feature-extraction")
        paths = {"original": original.onnx_path}
        for layout in LAYOUTS:
            out = Path(tmp) / layout
            original.compress(out, ProjClustConfig(compression=0.4, n_clusters=5, layout=layout))
            paths[layout] = out / "model.onnx"
        sessions = {name: open_session(path, providers, args.threads) for name, path in paths.items()}
        grid = [(b, s) for b in args.batch_sizes for s in args.sequence_lengths]
        latency = measure_latency(sessions, grid, 30522, warmup=3, repeats=args.repeats,
                                  use_iobinding=providers[0] == "CUDAExecutionProvider", progress=True)
    rows = []
    for key, base in latency["original"].items():
        row = [base["batch_size"], base["sequence_length"], base["p50_ms"]]
        for layout in LAYOUTS:
            row += [latency[layout][key]["p50_ms"], latency[layout][key]["p50_ms"] / base["p50_ms"]]
        rows.append(row)
    header = ["batch", "seq", "original p50 ms"]
    for layout in LAYOUTS:
        header += [f"{layout} p50 ms", f"{layout} / original"]
    append_results(f"Runtime layouts, MiniLM 40% k=5 ({providers[0]})", markdown_table(header, rows))


if __name__ == "__main__":
    main()
