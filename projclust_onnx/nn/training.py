"""A short, deterministic fine-tuning loop for sequence classifiers on the CPU or a GPU.

A plain PyTorch loop rather than transformers' Trainer: it needs no accelerate, runs
the same on a 2-core CPU and a GPU, and pads each batch only to its longest text,
which matters on a CPU. Used by the finefoods study and by `projclust-onnx finetune`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from projclust_onnx.common.errors import SettingError


@dataclass
class TrainingResult:
    epochs: float
    steps: int
    seconds: float
    final_loss: float


def batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator).tolist()
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train_classifier(model, tokenizer, texts: list[tuple[str, ...]], labels: list, *, epochs: float = 1.0,
                     batch_size: int = 32, learning_rate: float = 5e-5, max_length: int = 128, seed: int = 0,
                     device: str | torch.device = "cpu", max_steps: int | None = None,
                     progress: bool = True, on_epoch_end=None) -> TrainingResult:
    """Fine-tune `model` (a transformers sequence classifier) in place with AdamW and linear decay.

    `on_epoch_end(epoch)` is called after each full epoch (1, 2, ...), e.g. to evaluate.
    """
    if len(texts) != len(labels) or not texts:
        raise ValueError(f"{len(texts)} texts and {len(labels)} labels: give as many of each, at least one")
    if epochs <= 0:
        raise SettingError("epochs", f"{{}}={epochs} must be > 0")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(device).train()
    steps_per_epoch = math.ceil(len(texts) / batch_size)
    total = max_steps or max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))
    regression = getattr(model.config, "num_labels", 2) == 1
    bar = None
    if progress:
        from projclust_onnx.common.progress import new_bar

        bar = new_bar(total=total, desc="fine-tuning", unit="step")
    start, step, loss_value = time.perf_counter(), 0, float("nan")
    while step < total:
        for idx in batches(len(texts), batch_size, generator):
            columns = list(zip(*[texts[i] for i in idx]))
            encoded = tokenizer(*[list(c) for c in columns], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt").to(device)
            target = torch.tensor([labels[i] for i in idx], dtype=torch.float32 if regression else torch.long,
                                  device=device)
            loss = model(**encoded, labels=target).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.detach())
            if on_epoch_end is not None and step % steps_per_epoch == 0:
                on_epoch_end(step // steps_per_epoch)
                model.train()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if step >= total:
                break
    if bar is not None:
        bar.close()
    model.eval()
    return TrainingResult(epochs=step / steps_per_epoch, steps=step, seconds=time.perf_counter() - start,
                          final_loss=loss_value)


@torch.no_grad()
def predict_logits(model, tokenizer, texts: list[tuple[str, ...]], batch_size: int = 64, max_length: int = 128,
                   device: str | torch.device = "cpu") -> np.ndarray:
    model.to(device).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        columns = list(zip(*texts[start:start + batch_size]))
        encoded = tokenizer(*[list(c) for c in columns], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
        out.append(model(**encoded).logits.float().cpu().numpy())
    return np.concatenate(out)
