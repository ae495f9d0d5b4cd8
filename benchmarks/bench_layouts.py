"""Runtime layouts of the k-branch subgraph under ONNX Runtime: original vs grouped vs onehot,
and the two forms of reading quantized storage (contrib GatherBlockQuantized vs standard ops).

MiniLM (feature-extraction export) compressed by 40% with k=5 in each layout, and to 10%
of its table's bytes (k=5, int4 U, block 32) in each lookup form, and as codebooks at 16x
(`--method codebook --target-ratio 16`: five opset-13 operators and a rotation); p50 latency at each
batch/sequence point, all models interleaved in one run, as ratios to the original.
CUDA provider when onnxruntime offers it, else CPU; on a GPU the quantized models' outputs
are also compared with the CPU provider's.

    python benchmarks/bench_layouts.py [--batch-sizes 1 8 32] [--sequence-lengths 16 128] [--repeats 30]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import append_results, markdown_table
from projclust_onnx.passes import LAYOUTS, LOOKUP_FORMS

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.runner import measure_latency, open_session, resolve_providers
from projclust_onnx.pipeline.bundled import bundled_model_path


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
        for form in LOOKUP_FORMS:
            out = Path(tmp) / f"int4-{form}"
            original.compress(out, ProjClustConfig(compression=0.9, n_clusters=5, quantize="int4", lookup_form=form))
            paths[f"10% int4 {form}"] = out / "model.onnx"
        out = Path(tmp) / "codebook-16x"
        original.compress(out, ProjClustConfig(method="codebook", target_ratio=16), verbose=False)
        paths["codebooks 16x"] = out / "model.onnx"
        sessions = {name: open_session(path, providers, args.threads) for name, path in paths.items()}
        grid = [(b, s) for b in args.batch_sizes for s in args.sequence_lengths]
        latency = measure_latency(sessions, grid, 30522, warmup=3, repeats=args.repeats,
                                  use_iobinding=providers[0] == "CUDAExecutionProvider", progress=True)
        agreement = cuda_agreement(paths, providers) if providers[0] == "CUDAExecutionProvider" else ""
    names = [name for name in paths if name != "original"]
    rows = []
    for key, base in latency["original"].items():
        row = [base["batch_size"], base["sequence_length"], base["p50_ms"]]
        for name in names:
            row += [latency[name][key]["p50_ms"], latency[name][key]["p50_ms"] / base["p50_ms"]]
        rows.append(row)
    header = ["batch", "seq", "original p50 ms"]
    for name in names:
        header += [f"{name} p50 ms", f"{name} / original"]
    append_results(f"Runtime layouts and quantized lookup forms, MiniLM ({providers[0]})",
                   markdown_table(header, rows) + agreement)


def cuda_agreement(paths: dict, providers: list[str]) -> str:
    """Max abs difference between the CUDA and CPU providers' outputs of each model."""
    import numpy as np

    from projclust_onnx.pipeline.parity import random_feeds

    lines = ["", "", "CUDA vs CPU provider, max abs difference of the outputs (batch 4, sequence 64):", ""]
    for name, path in paths.items():
        cuda, cpu = open_session(path, providers), open_session(path, ["CPUExecutionProvider"])
        feeds = random_feeds(cpu.get_inputs(), "input_ids", 30522, 4, 64, np.random.default_rng(0))
        diff = float(np.abs(cuda.run(None, feeds)[0] - cpu.run(None, feeds)[0]).max())
        lines.append(f"- {name}: {diff:.3g}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
