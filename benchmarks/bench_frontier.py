"""Bytes against fidelity for every way to store MiniLM's word embedding, on one frontier.

The bundled MiniLM (feature-extraction export) with its 30522 x 384 table stored as:
fp32 (the original); ONNX Runtime's own int8 Gather (quantize_dynamic) and 4-bit
GatherBlockQuantized (MatMulNBitsQuantizer, blocks 32 and 128); SVD and projective
clustering (k = 3, 5, 8) at several budgets, each with float, int8 and int4 U, without and
with calibration; and what `--target-ratio` chooses at several ratios. With --anchors, at 4x, 8x,
12x, 16x, 24x and 32x: the chooser against FAISS PQ and OPQ (their fit, written in our codebook
lookup) and ONNX Runtime's 2-bit GatherBlockQuantized, in the same run, with a verdict per ratio:
the chooser's fidelity against the best anchor within the same bytes (benchmarks/anchors.py). Every model is a
real file: its embedding bytes are the file's bytes minus the rest of the original
model. Fidelity: mean cosine of mean-pooled sentence embeddings against the fp32
original on the first --count texts. With --classifier (an ONNX text-classification
export of the fine-food classifier, benchmarks/finetune_finefoods.py), the same storages
of that model's table are scored by test accuracy too (int4 U, calibrated, and ORT's).

    python benchmarks/bench_frontier.py --texts ../shared/data/finefoods/test.csv \
        --calibration ../shared/data/austen.txt [--classifier runs/finefoods-classifier/onnx]
    python benchmarks/bench_frontier.py --texts ../shared/data/finefoods/test.csv \
        --calibration ../shared/data/austen.txt --anchors

Each run writes its rows to frontier_minilm*.json and draws them (frontier_plot.py: one series per
storage family). --plot-only redraws a picture from such files, fitting nothing; several files merge
family by family, a later file's family replacing an earlier one's (README's picture: the factor grid
of the full run, then the newest run with anchors and codebooks):

    python benchmarks/bench_frontier.py --plot-only benchmarks/frontier_minilm.json \
        benchmarks/frontier_minilm_anchors.json --png benchmarks/frontier_minilm.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from common import RESULTS, append_results, markdown_table
from frontier_plot import merge_runs, plot_frontier
from projclust_onnx.passes import find_word_embedding, with_cleanup

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.runner import _mean_cosine, _outputs, open_session
from projclust_onnx.common.data import column, labeled_texts, load_records
from projclust_onnx.common.metrics import score
from projclust_onnx.core.budget import rank_for_budget
from projclust_onnx.core.calibration import calibration_weights, sample_weights
from projclust_onnx.pipeline.bundled import bundled_model_path
from projclust_onnx.pipeline.compressor import estimator_for, rewrite_pass
from projclust_onnx.pipeline.model_files import load_model, model_bytes, save_model
from projclust_onnx.storage.factorization import EmbeddingFactorization
from projclust_onnx.storage.registry import bits_of

BUDGETS = (0.6, 0.8, 0.9, 0.9375)
STORAGES = ("none", "int8", "int4")
RATIOS = (4, 7, 10, 16)
ANCHOR_RATIOS = (4, 8, 12, 16, 24, 32)


class Model:
    """One ONNX model directory of the study: writes variants of its table and scores them."""

    def __init__(self, onnx_path: Path, texts, labels=None) -> None:
        from transformers import AutoTokenizer

        self.path = onnx_path
        self.tokenizer = AutoTokenizer.from_pretrained(onnx_path.parent)
        self.texts, self.labels = texts, labels
        graph = load_model(onnx_path).graph
        match = find_word_embedding(graph)
        self.table = match.dense().astype(np.float32)
        self.table_bytes = self.table.nbytes
        self.rest_bytes = model_bytes(onnx_path) - match.stored_bytes
        self.reference = self.outputs(onnx_path)

    def outputs(self, path: Path) -> np.ndarray:
        return _outputs(open_session(path, ["CPUExecutionProvider"]), self.tokenizer, self.texts, 128, False, "")[0]

    def score(self, path: Path) -> dict:
        out = self.outputs(path)
        embedding = model_bytes(path) - self.rest_bytes
        row = {"embedding_bytes": embedding, "ratio": self.table_bytes / embedding,
               "fidelity": _mean_cosine(self.reference, out)}
        if self.labels is not None:
            row["accuracy"] = score(("accuracy",), self.labels, out)["accuracy"]
        return row

    def write(self, result, directory: Path, config: ProjClustConfig) -> Path:
        model = load_model(self.path)
        with_cleanup(rewrite_pass(result, config))(model)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(model, directory / "model.onnx")
        return directory / "model.onnx"


def ort_baselines(src: Path, work: Path) -> list[tuple[str, Path]]:
    """The word table quantized by ONNX Runtime's own tools (that node only: the position table stays
    float, so the bytes compare like for like)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    graph = load_model(src).graph
    word = find_word_embedding(graph).lookup.name
    others = [node.name for node in graph if node.op_type == "Gather" and node.name != word]
    out = []
    path = work / "ort-int8" / "model.onnx"
    path.parent.mkdir(parents=True)
    quantize_dynamic(str(src), str(path), op_types_to_quantize=["Gather"], nodes_to_quantize=[word],
                     weight_type=QuantType.QUInt8)
    out.append(("ORT int8 Gather (quantize_dynamic)", path))
    for block in (32, 128):
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, op_types_to_quantize=("Gather",),
                                              quant_axes=(("Gather", 1),))
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config, nodes_to_exclude=others)
        quantizer.process()
        path = work / f"ort-int4-b{block}" / "model.onnx"
        path.parent.mkdir(parents=True)
        onnx.save(quantizer.model.model, str(path))
        out.append((f"ORT 4-bit GatherBlockQuantized, block {block}", path))
    return out


def anchor_rows(study: Model, src: Path, ratios, work: Path) -> list[dict]:
    """FAISS PQ and OPQ at the largest m within each ratio's budget, and ORT's 2-bit GatherBlockQuantized."""
    from anchors import faiss_opq, faiss_pq, gather_2bit, largest_divisor_m

    rows, scored = [], {}  # (name, m) -> its row: a size that fits several ratios is fitted once
    n, d = study.table.shape
    config = ProjClustConfig()
    for ratio in ratios:
        budget = study.table_bytes / ratio
        for name, fit, rank in (("FAISS PQ", faiss_pq, None), ("FAISS OPQ", faiss_opq, d)):
            m = largest_divisor_m(n, d, budget, rank)
            if m is None:
                continue
            if (name, m) in scored:
                rows.append({**scored[name, m], "target": ratio})
                continue
            start = time.perf_counter()
            stored = fit(study.table, m)
            seconds = time.perf_counter() - start
            path = study.write(stored, work / f"{name.replace(' ', '-')}-{ratio}", config)
            rows.append({"family": f"{name} (m | d, 8-bit)", "weighting": "-", "budget": None, "j": None,
                         "chosen": f"m={m}", "target": ratio, "fit_s": seconds, **study.score(path)})
            scored[name, m] = rows[-1]
            print(rows[-1], flush=True)
    for block in (32, 64, 128):
        path = work / f"ort-2bit-b{block}" / "model.onnx"
        path.parent.mkdir(parents=True)
        gather_2bit(src, path, study.table, block)
        rows.append({"family": "ORT 2-bit GatherBlockQuantized", "weighting": "-", "budget": None, "j": None,
                     "chosen": f"block {block}", **study.score(path)})
        print(rows[-1], flush=True)
    return rows


def verdicts(rows: list[dict], table_bytes: int) -> list[list]:
    """Per ratio the chooser ran at: its bytes and fidelity against the most faithful anchor (FAISS, ORT)
    whose bytes fit the same budget."""
    out = []
    anchors = [r for r in rows if r["family"].startswith(("FAISS", "ORT"))]
    for r in rows:
        if not r["family"].startswith("chooser"):
            continue
        budget = table_bytes / r["target"]
        rivals = [a for a in anchors if a["embedding_bytes"] <= budget * 1.001]
        best = max(rivals, key=lambda a: a["fidelity"], default=None)
        if best is None:
            out.append([f"{r['target']:g}x", f"{r['embedding_bytes']:,}", f"{r['fidelity']:.4f}", r["chosen"],
                        "(no anchor fits)", "-", "-", "-"])
            continue
        out.append([f"{r['target']:g}x", f"{r['embedding_bytes']:,}", f"{r['fidelity']:.4f}", r["chosen"],
                    f"{best['family']} {best.get('chosen', '')}".strip(), f"{best['embedding_bytes']:,}",
                    f"{best['fidelity']:.4f}", "yes" if r["fidelity"] >= best["fidelity"] else "NO"])
    return out


def factor_rows(study: Model, weightings: dict, clusters, budgets, storages, work: Path, tag: str) -> list[dict]:
    rows = []
    n, d = study.table.shape
    for wname, (config, weights) in weightings.items():
        for k in clusters:
            method = "svd" if k == 1 else "projclust"
            for budget in budgets:
                for storage in storages:
                    try:
                        j = rank_for_budget(n, d, k, budget, 4, storage, config.block_size)
                    except ValueError:
                        continue
                    fitted = dataclasses.replace(config, method=method, n_clusters=k, quantize=storage)
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        estimator = estimator_for(fitted, j).fit(study.table, sample_weight=weights)
                    f = EmbeddingFactorization.from_estimator(estimator, study.table)
                    if storage != "none":
                        f = f.quantized(bits_of(storage), config.block_size, study.table, weights)
                    seconds = time.perf_counter() - start
                    path = study.write(f, work / f"{tag}-{wname}-{k}-{budget}-{storage}", fitted)
                    rows.append({"family": f"{method}{'' if k == 1 else f' k={k}'}, U {storage}",
                                 "weighting": wname, "budget": budget, "j": j, "fit_s": seconds, **study.score(path)})
                    print(rows[-1], flush=True)
    return rows


def main() -> None:
    logging.disable(logging.INFO)  # ONNX Runtime's quantizers log every node they skip
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", help="CSV/JSON with a text column (and a label column); required to fit")
    parser.add_argument("--count", type=int, default=300, help="texts for fidelity (default: 300)")
    parser.add_argument("--calibration", help="a text file for calibration; required to fit")
    parser.add_argument("--smoothing", type=float, default=1.0, help="calibration smoothing (default: 1)")
    parser.add_argument("--classifier", default=None, help="ONNX text-classification export to score accuracy on")
    parser.add_argument("--clusters", type=int, nargs="+", default=[3, 5, 8])
    parser.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS))
    parser.add_argument("--ratios", type=float, nargs="*", default=list(RATIOS), help="target ratios to choose at")
    parser.add_argument("--chooser-only", action="store_true",
                        help="only the originals, ONNX Runtime's quantizers and the chooser (no budget grid)")
    parser.add_argument("--anchors", action="store_true",
                        help="the chooser at 4x..32x against FAISS PQ/OPQ and ORT 2-bit (implies --chooser-only)")
    parser.add_argument("--plot-only", nargs="+", type=Path, metavar="JSON",
                        help="redraw the picture from frontier JSON files (oldest first), fitting nothing")
    parser.add_argument("--png", type=Path, default=RESULTS.parent / "frontier_minilm.png",
                        help="where --plot-only writes (default: benchmarks/frontier_minilm.png)")
    parser.add_argument("--note", default=None,
                        help="--plot-only: the picture's second title line (default: the last file's note)")
    args = parser.parse_args()
    if args.plot_only:
        notes = [json.loads(path.read_text()).get("note") for path in args.plot_only]
        note = args.note if args.note is not None else next((n for n in reversed(notes) if n), "")
        print(plot_frontier(merge_runs(args.plot_only), args.png, note))
        return
    if not args.texts or not args.calibration:
        parser.error("--texts and --calibration are required, except with --plot-only")
    if args.anchors:
        args.chooser_only = True
        if args.ratios == list(RATIOS):
            args.ratios = list(ANCHOR_RATIOS)

    records = load_records(args.texts)
    texts = [(t,) for t in column(records, "text")[:args.count]]
    source = ProjClustCompressor.from_pretrained(bundled_model_path(), task="feature-extraction")
    study = Model(source.onnx_path, texts)
    base = ProjClustConfig(n_init=5, calibration_smoothing=args.smoothing)
    calibrated = dataclasses.replace(base, calibration_text=[args.calibration])
    n = study.table.shape[0]
    weightings = {"special tokens": (base, sample_weights(base, n, study.tokenizer)[0]),
                  "calibrated": (calibrated, sample_weights(calibrated, n, study.tokenizer)[0])}
    rows = [{"family": "fp32 (original)", "weighting": "-", "budget": 0.0, "j": None,
             **study.score(source.onnx_path)}]
    with tempfile.TemporaryDirectory(prefix="frontier-") as tmp:
        work = Path(tmp)
        for name, path in ort_baselines(source.onnx_path, work):
            rows.append({"family": name, "weighting": "-", "budget": None, "j": None, **study.score(path)})
        if args.anchors:
            rows += anchor_rows(study, source.onnx_path, args.ratios, work)
        if not args.chooser_only:
            rows += factor_rows(study, weightings, (1, *args.clusters), args.budgets, STORAGES, work, "mini")
        for ratio in args.ratios:
            out = work / f"chosen-{ratio}"
            start = time.perf_counter()
            report = source.compress(out, dataclasses.replace(calibrated, target_ratio=ratio), verbose=False)
            rows.append({"family": "chooser (--target-ratio)", "weighting": "calibrated", "budget": None,
                         "j": report.rank, "chosen": report.choice["chosen"]["label"], "target": ratio,
                         "fit_s": time.perf_counter() - start, **study.score(out / "model.onnx")})
            print(rows[-1], flush=True)
        accuracy_rows = []
        if args.classifier and not args.chooser_only:
            texts_all, labels = labeled_texts(records, ["text"], "label")
            classifier = Model(Path(args.classifier) / "model.onnx", texts_all, labels)
            accuracy_rows.append({"family": "fp32 (original)", "budget": 0.0,
                                  **classifier.score(classifier.path)})
            for name, path in ort_baselines(classifier.path, work / "cls"):
                accuracy_rows.append({"family": name, "budget": None, **classifier.score(path)})
            cls_weights = {"calibrated": (calibrated, sample_weights(calibrated, n, classifier.tokenizer)[0])}
            accuracy_rows += factor_rows(classifier, cls_weights, (1, *args.clusters), args.budgets, ("int4",),
                                         work, "cls")
    tokens = calibration_weights(calibrated, n, study.tokenizer)[1]
    write_results(rows, accuracy_rows, args, tokens)


def write_results(rows: list[dict], accuracy_rows: list[dict], args, tokens: int) -> None:
    def fmt_budget(b):
        return "-" if b is None else f"{b:.2%}".rstrip("0").rstrip(".")

    table = markdown_table(
        ["family", "weighting", "budget", "j", "embedding bytes", "x smaller", "mean cosine", "chosen"],
        [[r["family"], r["weighting"], fmt_budget(r["budget"]), r["j"] or "-", f"{r['embedding_bytes']:,}",
          f"{r['ratio']:.2f}", f"{r['fidelity']:.4f}", r.get("chosen", "")] for r in rows])
    body = (f"Fidelity on the first {args.count} texts of {Path(args.texts).name}; calibration: "
            f"{Path(args.calibration).name} ({tokens:,} tokens, smoothing {args.smoothing:g}); 'special tokens' "
            "is the default weighting without calibration text. Embedding bytes = file bytes minus the rest "
            "of the original model.\n\n" + table)
    if accuracy_rows:
        body += "\n\nFine-food classifier, test accuracy (U int4, calibrated):\n\n" + markdown_table(
            ["family", "budget", "embedding bytes", "x smaller", "accuracy", "agreement cos"],
            [[r["family"], fmt_budget(r["budget"]), f"{r['embedding_bytes']:,}", f"{r['ratio']:.2f}",
              f"{r['accuracy']:.4f}", f"{r['fidelity']:.4f}"] for r in accuracy_rows])
    if args.anchors:
        body += ("\n\nThe chooser against the anchors, per ratio (the most faithful anchor whose embedding bytes fit "
                 "the same budget; FAISS m must divide 384):\n\n" + markdown_table(
                     ["ratio", "chooser bytes", "chooser cosine", "chosen", "best anchor in budget", "its bytes",
                      "its cosine", "chooser at least as faithful"], verdicts(rows, rows[0]["embedding_bytes"])))
    stem = "frontier_minilm_anchors" if args.anchors else \
        "frontier_minilm_chooser" if args.chooser_only else "frontier_minilm"
    plot = RESULTS.parent / f"{stem}.png"
    note = (f"first {args.count} texts of {Path(args.texts).name}; ours calibrated on {Path(args.calibration).name}"
            + (", the anchors uncalibrated" if args.anchors else ""))
    (RESULTS.parent / f"{stem}.json").write_text(json.dumps({"note": note, "fidelity": rows,
                                                             "accuracy": accuracy_rows}, indent=1, default=str) + "\n")
    plot_frontier(rows, plot, note)
    body += f"\n\n![bytes against fidelity]({plot.name})"
    title = "Size frontier: MiniLM word embedding, bytes against sentence-embedding fidelity"
    append_results(title + (" (chooser against FAISS and ONNX Runtime anchors)" if args.anchors else
                            " (chooser and ONNX Runtime only)" if args.chooser_only else ""), body)


if __name__ == "__main__":
    main()
