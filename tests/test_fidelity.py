"""pipeline/fidelity.py: how far the written model's outputs moved, in the summary and the report."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.fidelity import SAMPLE_TEXTS, cosines, sample_texts

TOKENIZER = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def test_cosines_are_row_wise_and_scale_free():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 7))
    np.testing.assert_allclose(cosines(a, 3 * a), 1.0, rtol=1e-12)
    np.testing.assert_allclose(cosines(a, -a), -1.0, rtol=1e-12)
    assert cosines(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0


def test_the_texts_are_the_calibration_text_spread_over_it_else_the_built_in_sample(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("".join(f"line number {i} has words\n" for i in range(1000)) + "short\n")
    texts, source = sample_texts(ProjClustConfig(calibration_text=[text]))
    assert len(texts) == 64 and texts[0] == "line number 0 has words" and texts[-1] == "line number 999 has words"
    assert "notes.txt" in source and "calibration" in source
    texts, source = sample_texts(ProjClustConfig())
    assert texts == list(SAMPLE_TEXTS) and "built-in" in source


@pytest.fixture
def model_with_tokenizer(tmp_path, minilm_path):
    """A tiny model over MiniLM's vocabulary, with MiniLM's tokenizer files beside it."""
    model_dir = write_model_dir(tmp_path / "tiny", embedding_model(30522, 8)[0]).parent
    for name in TOKENIZER:
        if (minilm_path / name).is_file():
            shutil.copy(minilm_path / name, model_dir / name)
    return model_dir


def test_the_report_and_the_summary_carry_the_fidelity_and_its_text(model_with_tokenizer, tmp_path):
    report = ProjClustCompressor.from_pretrained(model_with_tokenizer).compress(
        tmp_path / "out", ProjClustConfig(n_clusters=2, rank=3, n_init=1))
    found = report.fidelity
    assert found["texts"] == len(SAMPLE_TEXTS) and "built-in" in found["source"]
    assert -1.0 <= found["min_cosine"] <= found["mean_cosine"] <= 1.0 + 1e-12 and found["reason"] is None
    row = dict(report.summary_rows())["output fidelity"]
    assert row.startswith(f"mean cosine {found['mean_cosine']:.4f}") and "built-in" in row
    assert report.to_dict()["fidelity"] == found
    # the same table written back unchanged keeps every output: fidelity 1
    lossless = ProjClustCompressor.from_pretrained(model_with_tokenizer).compress(
        tmp_path / "lossless", ProjClustConfig(target_ratio=1.01))
    assert lossless.fidelity["mean_cosine"] > 0.9999


def test_without_a_tokenizer_there_is_no_fidelity_row(tmp_path):
    model_dir = write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent
    report = ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "out",
                                                                     ProjClustConfig(n_clusters=2, rank=3, n_init=1))
    assert report.fidelity is None and "output fidelity" not in dict(report.summary_rows())
