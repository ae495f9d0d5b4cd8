"""Fine-tune the bundled MiniLM as a five-star classifier on fine-food reviews, and export it.

The accuracy study compresses this classifier's embedding without further training.

    python benchmarks/finetune_finefoods.py --train ../shared/data/finefoods/train.csv \
        --test ../shared/data/finefoods/test.csv --output runs/finefoods-classifier [--epochs 2]

Writes OUTPUT/hf (the PyTorch model) and OUTPUT/onnx (the ONNX export, text-classification).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from common import append_results, markdown_table

from projclust_onnx.common.data import column, load_records
from projclust_onnx.nn.training import predict_logits, train_classifier
from projclust_onnx.pipeline.bundled import bundled_model_path
from projclust_onnx.pipeline.compressor import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    source = bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    train, test = load_records(args.train), load_records(args.test)
    texts = [(t,) for t in column(train, "text")]
    result = train_classifier(model, tokenizer, texts, column(train, "label"), epochs=args.epochs,
                              batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed)
    logits = predict_logits(model, tokenizer, [(t,) for t in column(test, "text")])
    accuracy = float((logits.argmax(1) == np.asarray(column(test, "label"))).mean())

    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    export_onnx(str(out / "hf"), out / "onnx", task="text-classification")
    append_results("Fine-food five-star classifier (bundled MiniLM, fine-tuned)", markdown_table(
        ["epochs", "steps", "train seconds", "final loss", "test accuracy (PyTorch)"],
        [[result.epochs, result.steps, result.seconds, result.final_loss, accuracy]]))


if __name__ == "__main__":
    main()
