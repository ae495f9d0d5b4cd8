"""`projclust-onnx benchmark` on a causal LM: decode-step latency after a KV cache, perplexity on a text file."""

from __future__ import annotations

import math

import pytest
from tiny_checkpoints import export_checkpoint, tiny_tokenizer

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.runner import markdown_report, run_benchmark

TEXT = "the cat sat on the mat . a dog barked at the mailman all day long , and the cat slept . " * 6


@pytest.mark.slow  # an export, a fit and a benchmark: about 30 s
def test_decoder_benchmark_reports_decode_steps_and_perplexity(minilm_path, tmp_path):
    original = export_checkpoint("gpt2", tmp_path / "gpt2")
    tiny_tokenizer(original, minilm_path / "vocab.txt")
    compressed = tmp_path / "pc40"
    ProjClustCompressor.from_pretrained(original).compress(
        compressed, ProjClustConfig(compression=0.4, n_clusters=3, n_init=1, anneal_steps=2))
    report = run_benchmark([("original", original), ("pc40", compressed)], tmp_path / "bench", batch_sizes=(1,),
                           sequence_lengths=(16,), warmup=1, repeats=3, memory=False, plots=False, progress=False,
                           perplexity_texts=[TEXT], max_length=32)
    assert report["decoder"] is True
    first, second = report["models"]["original"], report["models"]["pc40"]
    assert first["perplexity"]["next_token_agreement"] == 1.0 and first["perplexity"]["tokens"] > 32
    assert math.isfinite(second["perplexity"]["perplexity"]) and 0 <= second["perplexity"]["next_token_agreement"] <= 1
    assert "b1_s16" in first["latency"]  # one decode step after 16 cached positions
    text = markdown_report(report)
    assert "| model | perplexity | next-token agreement | tokens |" in text and "| cached |" in text
