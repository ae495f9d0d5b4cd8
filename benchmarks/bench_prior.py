"""What the row weights buy at high ratios: `--target-ratio R` on the bundled MiniLM, by calibration condition.

Conditions: no calibration text with the broad word-frequency prior (the default, core/prior.py), no
calibration text without it (`--calibration-prior none`: rows unweighted, as before the prior), Austen
(`--calibration-text`, prior blended in) and in-domain text (fine-food train, prior blended in). Each model is
written by `compress` as a user would run it, and scored as mean (and least) cosine of mean-pooled sentence
embeddings against the fp32 original on --count fine-food test reviews and on as many Austen lines (a second
text the fine-food conditions never saw), with the built-in multilingual sample's fidelity from the report.

    python benchmarks/bench_prior.py --texts ../shared/data/finefoods/test.csv \
        --train ../shared/data/finefoods/train.csv --austen ../shared/data/austen.txt --ratios 16 32
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from common import append_results, markdown_table

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.common.data import column, load_records
from projclust_onnx.pipeline.bundled import bundled_model_path
from projclust_onnx.pipeline.fidelity import measure_fidelity

CONDITIONS = ("prior (default)", "none", "Austen", "in-domain")


def settings(condition: str, args) -> dict:
    return {"prior (default)": {}, "none": {"calibration_prior": "none"},
            "Austen": {"calibration_text": [args.austen]},
            "in-domain": {"calibration_dataset": args.train}}[condition]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", required=True, help="CSV with a text column: the fine-food test reviews")
    parser.add_argument("--train", required=True, help="CSV with a text column: in-domain calibration text")
    parser.add_argument("--austen", required=True, help="a text file: out-of-domain calibration, and held-out lines")
    parser.add_argument("--ratios", type=float, nargs="+", default=[16.0, 32.0])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--count", type=int, default=300, help="texts of each set scored (default: 300)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.disable(logging.WARNING)
    from transformers import AutoTokenizer

    food = [str(t) for t in column(load_records(args.texts), "text")][: args.count]
    lines = [line.strip() for line in Path(args.austen).read_text().splitlines() if len(line.strip()) > 40]
    austen = lines[:: max(1, len(lines) // args.count)][: args.count]
    compressor = ProjClustCompressor.from_pretrained(bundled_model_path())
    tokenizer = AutoTokenizer.from_pretrained(compressor.source_dir)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for ratio in args.ratios:
            for condition in args.conditions:
                out = Path(work) / f"{condition}-{ratio:g}".replace(" ", "_").replace("(", "").replace(")", "")
                start = time.perf_counter()
                report = compressor.compress(out, ProjClustConfig(target_ratio=ratio, **settings(condition, args)),
                                             verbose=False)
                seconds = time.perf_counter() - start
                scores = [measure_fidelity(compressor.onnx_path, out / "model.onnx", tokenizer, texts, name)
                          for name, texts in (("fine-food test", food), ("Austen lines", austen))]
                chosen = report.choice["chosen"]["label"] if report.choice else report.storage_after
                rows.append([f"{ratio:g}", condition, chosen, f"{report.embedding_bytes_after:,}",
                             *(f"{s.mean_cosine:.4f} ({s.min_cosine:.3f})" for s in scores),
                             f"{report.fidelity['mean_cosine']:.4f}" if report.fidelity else "n/a", f"{seconds:.0f}"])
    table = markdown_table(["ratio", "calibration", "chosen", "bytes", "fine-food test: mean (least)",
                            "Austen lines: mean (least)", "built-in sample", "compress s"], rows)
    append_results("Row weights at high ratios: the broad prior against none, Austen and in-domain text "
                   "(bench_prior.py)",
                   f"Bundled MiniLM (30522 x 384), `compress --target-ratio R`, {len(food)} fine-food test reviews "
                   f"and {len(austen)} Austen lines; cosine of mean-pooled sentence embeddings to the fp32 "
                   "original. The Austen condition's Austen-lines score is in-sample; the fine-food conditions "
                   "never saw those lines. Times include the numeric check and the output-fidelity sample.\n\n"
                   + table)


if __name__ == "__main__":
    main()
