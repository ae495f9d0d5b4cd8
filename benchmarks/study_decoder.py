"""Perplexity of a small causal LM with its tied table compressed (lookup and head together): SVD, projclust,
codebooks.

No real decoder ships offline, so one is trained here: GPT-2-shaped (tied embeddings), the
bundled MiniLM's WordPiece vocabulary (30522 rows), on ../shared/data/austen.txt with every
tenth chapter held out. It is exported by Optimum for text-generation-with-past, compressed
by 40% and 60% with SVD (k=1) and projective clustering (k clusters), and to 1/8, 1/16 and
1/32 of the table's bytes as codebooks, calibrated on the training chapters' token counts,
and evaluated under ONNX Runtime on the held-out chapters: perplexity, and greedy agreement
(the share of positions where the compressed model's next-token argmax equals the
original's).

    python benchmarks/study_decoder.py --austen ../shared/data/austen.txt [--minutes 6] [--clusters 5]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import append_results, markdown_table

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.bundled import bundled_model_path

SEQ = 128


def split_chapters(text: str, every: int = 10) -> tuple[str, str]:
    """(training text, held-out text): every `every`-th chapter held out."""
    chapters = re.split(r"\n(?=CHAPTER |Chapter )", text)
    held = [c for i, c in enumerate(chapters) if i % every == every - 1]
    train = [c for i, c in enumerate(chapters) if i % every != every - 1]
    return "\n".join(train), "\n".join(held)


def windows(ids: list[int], limit: int | None = None) -> np.ndarray:
    n = len(ids) // SEQ
    out = np.array(ids[: n * SEQ], np.int64).reshape(n, SEQ)
    return out[:limit] if limit else out


def train(train_ids: np.ndarray, vocab: int, minutes: float, directory: Path, seed: int = 0) -> Path:
    """Train a 2-layer, 128-wide tied GPT-2 for `minutes` on the training windows; save it to `directory`."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=128, n_layer=2, n_head=4, n_positions=SEQ,
                                     bos_token_id=101, eos_token_id=102)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    deadline, step, start = time.monotonic() + 60 * minutes, 0, time.monotonic()
    model.train()
    while time.monotonic() < deadline:
        batch = torch.from_numpy(train_ids[rng.integers(0, len(train_ids), 16)])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"  step {step}: loss {loss.item():.3f} ({time.monotonic() - start:.0f}s)", file=sys.stderr)
    model.eval().save_pretrained(directory)
    return directory


def evaluate(onnx_dir: Path, held: np.ndarray, reference_argmax: np.ndarray | None = None):
    """(perplexity, argmax per position) of model.onnx run with an empty cache on the held-out windows."""
    import onnxruntime as ort

    from projclust_onnx.common.threads import session_options

    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), session_options(0),
                                   providers=["CPUExecutionProvider"])
    total, count, argmaxes = 0.0, 0, []
    for start in range(0, len(held), 8):
        ids = held[start:start + 8]
        b = len(ids)
        feeds = {}
        for spec in session.get_inputs():
            if spec.name == "input_ids":
                feeds[spec.name] = ids
            elif spec.name == "attention_mask":
                feeds[spec.name] = np.ones_like(ids)
            elif spec.name == "position_ids":
                feeds[spec.name] = np.broadcast_to(np.arange(SEQ), ids.shape).copy()
            else:
                shape = [b if d == "batch_size" else 0 if isinstance(d, str) else d for d in spec.shape]
                feeds[spec.name] = np.zeros(shape, np.float32)
        logits = session.run(["logits"], feeds)[0][:, :-1].astype(np.float64)
        targets = ids[:, 1:]
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= float(np.take_along_axis(logp, targets[..., None], -1).sum())
        count += targets.size
        argmaxes.append(logits.argmax(-1))
    return math.exp(total / count), np.concatenate(argmaxes)


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--austen", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--eval-windows", type=int, default=200)
    parser.add_argument("--ratios", type=float, nargs="*", default=[8, 16, 32],
                        help="codebook sizes (1/R of the table's bytes; none: factors only)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the trained model and exports here")
    args = parser.parse_args()

    from optimum.exporters.onnx import main_export

    from projclust_onnx.pipeline.compressor import quiet_third_party

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path())
    train_text, held_text = split_chapters(args.austen.read_text())
    with quiet_third_party():
        train_ids = windows(tokenizer(train_text)["input_ids"])
        held = windows(tokenizer(held_text)["input_ids"], args.eval_windows)
    print(f"{len(train_ids)} training windows, {len(held)} held-out windows of {SEQ} tokens", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="study-decoder-") as tmp:
        root = args.keep or Path(tmp)
        hf = train(train_ids, tokenizer.vocab_size, args.minutes, root / "hf")
        tokenizer.save_pretrained(hf)
        calibration = root / "train.txt"
        calibration.write_text(train_text)
        with quiet_third_party():
            main_export(str(hf), output=root / "onnx", task="text-generation-with-past",
                        library_name="transformers", do_validation=False)
        ppl0, ref = evaluate(root / "onnx", held)
        rows = [["original", "-", "-", f"{ppl0:.2f}", "-", "1.0000", _mib(root / "onnx")]]
        for compression in (0.4, 0.6):
            for method, k in (("svd", 1), ("projclust", args.clusters)):
                out = root / f"{method}_{int(compression * 100)}"
                config = ProjClustConfig(method=method, n_clusters=k, compression=compression,
                                         calibration_text=[str(calibration)])
                report = ProjClustCompressor.from_pretrained(root / "onnx").compress(out, config, verbose=False)
                ppl, argmax = evaluate(out, held)
                rows.append([method, f"{compression:.0%}", f"k={report.n_clusters}, j={report.rank}", f"{ppl:.2f}",
                             f"{ppl / ppl0 - 1:+.1%}", f"{float(np.mean(argmax == ref)):.4f}", _mib(out)])
                print(rows[-1], file=sys.stderr)
        for ratio in args.ratios:  # codebooks: the head reads the table they decode to (folded at session start)
            out = root / f"codebook_{ratio:g}x"
            config = ProjClustConfig(method="codebook", target_ratio=ratio, calibration_text=[str(calibration)])
            report = ProjClustCompressor.from_pretrained(root / "onnx").compress(out, config, verbose=False)
            ppl, argmax = evaluate(out, held)
            realised = report.embedding_bytes_before / report.embedding_bytes_after
            rows.append(["codebook", f"{ratio:g}x ({realised:.1f}x)", report.storage, f"{ppl:.2f}",
                         f"{ppl / ppl0 - 1:+.1%}", f"{float(np.mean(argmax == ref)):.4f}", _mib(out)])
            print(rows[-1], file=sys.stderr)
    body = (f"GPT-2 shape (2 layers, 128 wide, tied), MiniLM's WordPiece vocabulary ({tokenizer.vocab_size} rows), "
            f"trained {args.minutes:g} min on Austen with every tenth chapter held out; {len(held)} held-out windows "
            f"of {SEQ} tokens. Lookup and head factorized together (one set of factors), or stored as codebooks "
            "(`--method codebook --target-ratio R`: the head reads the table the lookup's codebooks decode to, "
            "which ONNX Runtime folds at session start), calibrated on the training chapters. Compression: of the "
            "table's bytes (codebooks: asked, and as written). Greedy agreement: share of positions whose "
            "next-token argmax equals the original's.\n\n"
            + markdown_table(["method", "compression", "factors or storage", "perplexity", "vs original",
                              "greedy agreement", ".onnx MiB"], rows))
    append_results("Tied causal LM on Austen: perplexity with the table factorized or in codebooks "
                   "(study_decoder.py)", body)


def _mib(directory: Path) -> str:
    return f"{sum(f.stat().st_size for f in directory.glob('*.onnx*')) / 2**20:.2f}"


if __name__ == "__main__":
    main()
