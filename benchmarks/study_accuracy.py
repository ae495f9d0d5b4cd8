"""Accuracy study: SVD vs projective clustering at equal budgets, unweighted and weighted.

Compresses the fine-tuned fine-food classifier (benchmarks/finetune_finefoods.py) at each
budget with SVD (k=1) and projective clustering (each k), each unweighted and weighted by
token frequencies of each calibration text; no fine-tuning after compression. Reports test
accuracy, fidelity (mean cosine of the logits against the original's, and prediction
agreement) and, at one budget, CPU latency interleaved with the original. Same seed, same
data and same budget for every method.

    python benchmarks/study_accuracy.py --classifier runs/finefoods-classifier/onnx \
        --test ../shared/data/finefoods/test.csv \
        --calibration austen=../shared/data/austen.txt train=../shared/data/finefoods/train.csv
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import RESULTS, append_results, markdown_table

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.plots import plot_accuracy
from projclust_onnx.benchmark.runner import _outputs, measure_latency, open_session, resolve_providers
from projclust_onnx.common.data import column, load_records
from projclust_onnx.common.metrics import accuracy


def calibration_config(spec: str | None) -> dict:
    """'none', or a text file (.txt) or CSV/JSON with a text column, as ProjClustConfig fields."""
    if spec is None:
        return {}
    if spec.endswith(".txt"):
        return {"calibration_text": [spec]}
    return {"calibration_dataset": spec, "calibration_column": "text"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, help="ONNX classifier directory")
    parser.add_argument("--test", required=True, help="CSV with text,label")
    parser.add_argument("--calibration", nargs="*", default=[], metavar="NAME=FILE")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6])
    parser.add_argument("--clusters", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--latency-budget", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--plot", default=str(RESULTS.parent / "accuracy_finefoods.png"))
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    source = Path(args.classifier)
    test = load_records(args.test)
    texts, labels = [(t,) for t in column(test, "text")], np.asarray(column(test, "label"))
    tokenizer = AutoTokenizer.from_pretrained(source)
    providers = resolve_providers("auto")

    def evaluate(model_dir: Path) -> np.ndarray:
        session = open_session(model_dir / "model.onnx", providers)
        return _outputs(session, tokenizer, texts, 128, False, model_dir.name)[0]

    base_logits = evaluate(source)
    base_acc = accuracy(labels, base_logits.argmax(1))
    weightings = {"none": None, **dict(spec.split("=", 1) for spec in args.calibration)}
    methods = [("svd", 1)] + [("projclust", k) for k in args.clusters]
    compressor = ProjClustCompressor.from_pretrained(source)
    rows, latency_models = [], {"original": source / "model.onnx"}
    with tempfile.TemporaryDirectory() as tmp:
        for compression in args.budgets:
            for method, k in methods:
                for weighting, spec in weightings.items():
                    name = f"{method}-k{k}-{weighting}-{compression:.0%}"
                    out = Path(tmp) / name
                    config = ProjClustConfig(method=method, n_clusters=k, compression=compression, seed=0,
                                             **calibration_config(spec))
                    report = compressor.compress(out, config)
                    logits = evaluate(out)
                    cosine = float(((logits * base_logits).sum(1) / np.linalg.norm(logits, axis=1)
                                    / np.linalg.norm(base_logits, axis=1)).mean())
                    rows.append({"method": f"{method} k={k} ({weighting})", "k": k, "weighting": weighting,
                                 "compression": report.embedding_compression, "budget": compression,
                                 "rank": report.rank, "relative_error": report.relative_error,
                                 "accuracy": accuracy(labels, logits.argmax(1)),
                                 "drop_points": 100 * (base_acc - accuracy(labels, logits.argmax(1))),
                                 "fidelity_cosine": cosine,
                                 "agreement": float((logits.argmax(1) == base_logits.argmax(1)).mean())})
                    print(rows[-1], flush=True)
                    if abs(compression - args.latency_budget) < 1e-9 and weighting == "none":
                        latency_models[name] = out / "model.onnx"
        sessions = {name: open_session(path, providers) for name, path in latency_models.items()}
        latency = measure_latency(sessions, [(8, 128)], 30522, warmup=3, repeats=args.repeats,
                                  use_iobinding=providers[0] == "CUDAExecutionProvider")

    table = markdown_table(
        ["budget", "method", "j", "rel. error", "test accuracy", "drop (points)", "fidelity cos", "agreement"],
        [[f"{r['budget']:.0%}", r["method"], r["rank"], r["relative_error"], r["accuracy"], r["drop_points"],
          r["fidelity_cosine"], r["agreement"]] for r in rows])
    lat_rows = [[name, s["b8_s128"]["p50_ms"], s["b8_s128"]["p50_ms"] / latency["original"]["b8_s128"]["p50_ms"]]
                for name, s in latency.items()]
    plot_accuracy(rows, base_acc, Path(args.plot))
    if args.json:
        Path(args.json).write_text(json.dumps({"original_accuracy": base_acc, "rows": rows, "latency": latency},
                                              indent=2))
    append_results(
        f"Accuracy study: fine-food classifier, embedding compression without fine-tuning ({providers[0]})",
        f"Original test accuracy: {base_acc:.4f} on {len(labels)} reviews.\n\n{table}\n\n"
        f"Latency at batch 8, sequence 128 (models interleaved, {args.repeats} runs each):\n\n"
        + markdown_table(["model", "p50 ms", "vs original"], lat_rows)
        + f"\n\n![accuracy vs compression]({Path(args.plot).name})")


if __name__ == "__main__":
    main()
