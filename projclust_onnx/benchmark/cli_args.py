"""Arguments of `projclust-onnx benchmark` (argparse only: imported when the CLI starts)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="NAME=DIR|DIR",
                        help="model directories; the first is the original the others are compared with")
    parser.add_argument("--output", "-o", default="benchmark-output",
                        help="directory for report.json, report.md and latency.png (default: benchmark-output)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous report in --output")
    parser.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: CUDA (with IO binding) when onnxruntime offers it, else CPU (default: auto)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="batch sizes (default: 1 8)")
    parser.add_argument("--sequence-lengths", type=int, nargs="+", default=[32, 128],
                        help="sequence lengths (default: 32 128)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per model and point (default: 3)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per model and point (default: 20)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads (default: 0, the CPUs this process may use)")
    data = parser.add_argument_group("accuracy and fidelity (optional)")
    data.add_argument("--glue-task", default=None, help="a GLUE task, loaded with datasets.load_dataset('glue', task)")
    data.add_argument("--data-files", nargs="+", default=None, help="local CSV/JSON files with labeled texts")
    data.add_argument("--fidelity-text", nargs="+", default=None, metavar="FILE",
                      help="text files, one text a line: fidelity (mean cosine to the original) without labels")
    data.add_argument("--perplexity-text", nargs="+", default=None, metavar="FILE",
                      help="for a causal LM with a KV cache: perplexity and next-token agreement with the original "
                           "on these text files, in windows of --max-length tokens")
    data.add_argument("--split", default=None, help="dataset split (default: validation for GLUE)")
    data.add_argument("--text-column", nargs="+", default=None, help="one or two text columns of --data-files")
    data.add_argument("--label-column", default="label", help="label column of --data-files (default: label)")
    data.add_argument("--max-samples", type=int, default=None, help="use at most this many texts (default: all)")
    data.add_argument("--max-length", type=int, default=128, help="tokens per text, truncated (default: 128)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-model memory measurement")
    parser.add_argument("--no-plots", action="store_true", help="skip latency.png")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
