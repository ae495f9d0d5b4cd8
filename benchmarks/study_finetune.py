"""Fine-tuning study: post-training compression vs 1 and 2 epochs of fine-tuning after it.

Starts from the fine-food classifier (benchmarks/finetune_finefoods.py, OUTPUT/hf and OUTPUT/onnx).
For each budget and method: test accuracy of the post-training compressed ONNX model, then
the embedding is factorized the same way (same seed, same budget), swapped for a trainable
ProjClustEmbedding and the whole model fine-tuned on the training set; test accuracy after
epoch 1 and epoch 2 (one 2-epoch run with linear decay), and the time it took.

    python benchmarks/study_finetune.py --classifier runs/finefoods-classifier \
        --train ../shared/data/finefoods/train.csv --test ../shared/data/finefoods/test.csv
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import append_results, markdown_table

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.runner import _outputs, open_session
from projclust_onnx.common.data import column, load_records
from projclust_onnx.core.calibration import sample_weights
from projclust_onnx.nn.embedding import replace_word_embeddings
from projclust_onnx.nn.training import predict_logits, train_classifier
from projclust_onnx.pipeline.compressor import fit_factorization


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, help="directory with hf/ and onnx/")
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.4])
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf, onnx_dir = Path(args.classifier) / "hf", Path(args.classifier) / "onnx"
    tokenizer = AutoTokenizer.from_pretrained(hf)
    train, test = load_records(args.train), load_records(args.test)
    train_texts, train_labels = [(t,) for t in column(train, "text")], column(train, "label")
    test_texts, test_labels = [(t,) for t in column(test, "text")], np.asarray(column(test, "label"))

    def ort_accuracy(directory: Path) -> float:
        logits = _outputs(open_session(directory / "model.onnx", ["CPUExecutionProvider"]), tokenizer, test_texts,
                          128, False, directory.name)[0]
        return float((logits.argmax(1) == test_labels).mean())

    original = ort_accuracy(onnx_dir)
    rows = []
    for compression in args.budgets:
        for method, k in (("svd", 1), ("projclust", args.clusters)):
            config = ProjClustConfig(method=method, n_clusters=k, compression=compression, seed=0)
            with tempfile.TemporaryDirectory() as tmp:
                ProjClustCompressor.from_pretrained(onnx_dir).compress(Path(tmp) / "post", config)
                post = ort_accuracy(Path(tmp) / "post")
            model = AutoModelForSequenceClassification.from_pretrained(hf)
            table = model.get_input_embeddings().weight.detach().numpy()
            weights, _, _ = sample_weights(config, table.shape[0], tokenizer)
            factorization = fit_factorization(table, config, config.rank_for(*table.shape), weights)
            replace_word_embeddings(model, factorization, config.layout)
            per_epoch: dict[int, tuple[float, float]] = {}
            start = time.perf_counter()

            def evaluate(epoch: int, model=model, start=start, per_epoch=per_epoch, label=config) -> None:
                seconds = time.perf_counter() - start
                logits = predict_logits(model, tokenizer, test_texts)
                per_epoch[epoch] = (float((logits.argmax(1) == test_labels).mean()), seconds)
                print(f"{label.method} {label.compression:.0%} epoch {epoch}: {per_epoch[epoch]}", flush=True)

            train_classifier(model, tokenizer, train_texts, train_labels, epochs=args.epochs, seed=0,
                             on_epoch_end=evaluate)
            row = [f"{compression:.0%}", f"{method} k={k}", config.rank_for(*table.shape), post,
                   100 * (original - post)]
            for epoch in range(1, args.epochs + 1):
                acc, seconds = per_epoch[epoch]
                row += [acc, 100 * (original - acc), seconds]
            rows.append(row)
    header = ["budget", "method", "j", "post-training acc", "drop (points)"]
    for epoch in range(1, args.epochs + 1):
        header += [f"{epoch} epoch acc", f"{epoch} epoch drop", f"train s (to epoch {epoch})"]
    append_results("Fine-tuning after compression: fine-food classifier",
                   f"Original test accuracy: {original:.4f} ({len(test_labels)} reviews).\n\n"
                   + markdown_table(header, rows))


if __name__ == "__main__":
    main()
