"""Sentence-embedding fidelity of compressed MiniLM: SVD vs projective clustering, with and without weighting.

The bundled MiniLM (feature-extraction export) compressed at one budget; mean cosine between
the original's and each compressed model's mean-pooled sentence embeddings on the first
N texts of a CSV. Variants: SVD and projective clustering, each without any weighting,
with the default special-token weighting, and with calibration texts.

    python benchmarks/bench_fidelity.py --texts ../shared/data/finefoods/test.csv \
        --calibration austen=../shared/data/austen.txt train=../shared/data/finefoods/train.csv
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import append_results, markdown_table

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.runner import _mean_cosine, _outputs, open_session
from projclust_onnx.common.data import column, load_records
from projclust_onnx.pipeline.bundled import bundled_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", required=True, help="CSV/JSON with a text column")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--compression", type=float, default=0.4)
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--calibration", nargs="*", default=[], metavar="NAME=FILE")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    texts = [(t,) for t in column(load_records(args.texts), "text")[:args.count]]
    original = ProjClustCompressor.from_pretrained(bundled_model_path(), task="feature-extraction")
    tokenizer = AutoTokenizer.from_pretrained(original.source_dir)

    def pooled(onnx_path: Path):
        return _outputs(open_session(onnx_path, ["CPUExecutionProvider"]), tokenizer, texts, 128, False, "")[0]

    reference = pooled(original.onnx_path)
    variants = [("no weighting", {"special_token_weight": 0.0}), ("special tokens (default)", {})]
    for spec in args.calibration:
        name, path = spec.split("=", 1)
        field = {"calibration_text": [path]} if path.endswith(".txt") else {"calibration_dataset": path}
        variants.append((f"special tokens + calibration on {name}", field))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method, k in (("svd", 1), ("projclust", args.clusters)):
            for label, fields in variants:
                out = Path(tmp) / f"{method}-{len(rows)}"
                config = ProjClustConfig(method=method, n_clusters=k, compression=args.compression, **fields)
                report = original.compress(out, config)
                rows.append([f"{method} k={k}", label, report.rank, report.relative_error,
                             _mean_cosine(reference, pooled(out / "model.onnx"))])
    append_results(
        f"Sentence-embedding fidelity, MiniLM at {args.compression:.0%} (first {len(texts)} texts of "
        f"{Path(args.texts).name}, mean-pooled, mean cosine to the original)",
        markdown_table(["method", "weighting", "j", "rel. error", "mean cosine"], rows))


if __name__ == "__main__":
    main()
