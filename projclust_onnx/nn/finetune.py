"""Compress, fine-tune, export: recover accuracy with a short training run after compression.

The word embedding of a Hugging Face classifier is factorized by the core, swapped for a
trainable ProjClustEmbedding, and the model is fine-tuned (all weights, U and V included).
For export, the trained factors are put back as their exact dense table, Optimum exports
the model, and the graph pass rewrites that table into the k-branch subgraph with the
trained factors; its numeric check compares against the dense export.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from projclust_onnx.common import arguments as arg
from projclust_onnx.common.errors import SettingError
from projclust_onnx.pipeline.config import ProjClustConfig
from projclust_onnx.storage import registry


@dataclass
class FinetuneReport:
    epochs: float
    steps: int
    train_seconds: float
    final_loss: float
    eval_metrics: dict | None
    compression: dict
    model: object = field(default=None, repr=False)  # the trained PyTorch model (dense table), not saved

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "model"}


def training_settings(epochs, batch_size, learning_rate, max_length) -> tuple[float, int, float, int]:
    """The training settings, checked by type and range (before any data or model is loaded)."""
    if arg.number("epochs", epochs) <= 0:
        raise SettingError("epochs", f"{{}}={epochs} must be > 0, e.g. 1 for one pass over the training data")
    return (float(epochs), arg.whole("batch_size", batch_size, 1),
            arg.number("learning_rate", learning_rate, minimum=0.0), arg.whole("max_length", max_length, 1))


def check_finetune_config(config: ProjClustConfig) -> None:
    """Refuse what fine-tuning cannot train, before any data or model is loaded: it trains the factors
    (U and V) of projective clustering or SVD, sized by --compression or --rank."""
    if config.target_ratio is not None:
        raise SettingError("target_ratio", "finetune trains factors sized by --compression or --rank; {} chooses "
                           "among storages it cannot train: give --compression or --rank, or compress without "
                           "fine-tuning")
    entry = registry.method_format(config.method)
    if not entry.branches:
        factors = " or ".join(registry.method_format(registry.default_method()).methods)
        raise SettingError("method", f"finetune trains projective-clustering or SVD factors, not {{}} "
                           f"{config.method}: give --method {factors}, or compress without fine-tuning")


def finetune(model_name_or_path: str, save_dir: str | Path, train_texts: list[tuple[str, ...]], train_labels: list,
             config: ProjClustConfig | None = None, *, num_labels: int = 2, epochs: float = 1.0,
             batch_size: int = 32, learning_rate: float = 5e-5, max_length: int = 128,
             eval_texts: list[tuple[str, ...]] | None = None, eval_labels: list | None = None,
             metrics: tuple[str, ...] = ("accuracy",), overwrite: bool = False, verbose: bool = True,
             device: str = "cpu") -> FinetuneReport:
    """Compress the embedding of a sequence classifier, fine-tune it, export it compressed to save_dir."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from projclust_onnx.common.metrics import score
    from projclust_onnx.core.calibration import sample_weights
    from projclust_onnx.nn.embedding import check_untied, densify_word_embeddings, replace_word_embeddings
    from projclust_onnx.nn.training import predict_logits, train_classifier
    from projclust_onnx.pipeline.compressor import ProjClustCompressor, export_onnx, fit_factorization
    from projclust_onnx.pipeline.output_dir import (
        add_to_manifest,
        check_output_dir,
        clean_leftovers,
        temp_dir,
        write_text_atomic,
    )

    config = ProjClustConfig.coerce(config)
    check_finetune_config(config)
    overwrite = arg.flag("overwrite", overwrite)
    epochs, batch_size, learning_rate, max_length = training_settings(epochs, batch_size, learning_rate, max_length)
    clean_leftovers(Path(save_dir))
    check_output_dir(Path(save_dir), overwrite, [])
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, num_labels=num_labels)
    check_untied(model)
    table = model.get_input_embeddings().weight.detach().cpu().numpy()
    n, d = table.shape
    weights, _, _ = sample_weights(config, n, tokenizer)
    clock = time.perf_counter()
    factorization = fit_factorization(table, config, config.rank_for(n, d), weights, verbose)
    clustering_seconds = time.perf_counter() - clock
    replace_word_embeddings(model, factorization, config.layout)
    result = train_classifier(model, tokenizer, train_texts, train_labels, epochs=epochs, batch_size=batch_size,
                              learning_rate=learning_rate, max_length=max_length, seed=config.seed, device=device,
                              progress=verbose)
    eval_metrics = None
    if eval_texts is not None:
        logits = predict_logits(model, tokenizer, eval_texts, max_length=max_length, device=device)
        eval_metrics = score(metrics, eval_labels, logits)
    trained = densify_word_embeddings(model)
    with temp_dir("finetune") as tmp:
        model.to("cpu").save_pretrained(Path(tmp) / "hf")
        tokenizer.save_pretrained(Path(tmp) / "hf")
        export_onnx(str(Path(tmp) / "hf"), Path(tmp) / "onnx", task="text-classification")
        report = ProjClustCompressor(Path(tmp) / "onnx" / "model.onnx", model_name_or_path).compress(
            save_dir, config, overwrite=overwrite, factorization=trained)
    report.timings["clustering"] = clustering_seconds
    out = FinetuneReport(epochs=result.epochs, steps=result.steps, train_seconds=result.seconds,
                         final_loss=result.final_loss, eval_metrics=eval_metrics, compression=report.to_dict(),
                         model=model)
    write_text_atomic(Path(save_dir) / "projclust_finetune.json", json.dumps(out.to_dict(), indent=2) + "\n")
    add_to_manifest(Path(save_dir), ["projclust_finetune.json"])
    return out


def num_labels_of(labels: list) -> int:
    values = np.unique(np.asarray(labels))
    return 1 if values.dtype.kind == "f" else int(values.max()) + 1
