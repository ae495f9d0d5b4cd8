"""ProjClustEmbedding and the fine-tuning path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from projclust_onnx import EmbeddingFactorization, ProjClustConfig
from projclust_onnx.nn.embedding import ProjClustEmbedding, densify_word_embeddings, replace_word_embeddings


def random_factorization(n=50, d=12, k=4, j=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.arange(k), rng.integers(0, k, n - k)]
    return EmbeddingFactorization(labels=labels, U=rng.standard_normal((n, j)).astype(np.float32),
                                  V=rng.standard_normal((k, j, d)).astype(np.float32))


@pytest.mark.parametrize("layout", ["grouped", "onehot"])
def test_output_is_the_reconstruction_gathered_per_token(layout):
    fact = random_factorization()
    module = ProjClustEmbedding(fact, layout)
    ids = torch.tensor([[0, 49, 7, 7], [3, 1, 2, 0]])
    out = module(ids)
    assert out.shape == (2, 4, 12)
    np.testing.assert_allclose(out.detach().numpy(), fact.reconstruct()[ids.numpy()], atol=1e-5)
    assert module(torch.tensor(5)).shape == (12,)


@pytest.mark.parametrize("layout", ["grouped", "onehot"])
def test_gradients_reach_u_and_v(layout):
    fact = random_factorization()
    module = ProjClustEmbedding(fact, layout)
    ids = torch.tensor([0, 1, 2, 3, 10])
    module(ids).square().sum().backward()
    touched = np.zeros(50, bool)
    touched[ids.numpy()] = True
    grad_u = module.U.grad.abs().sum(1).numpy()
    assert (grad_u[touched] > 0).all() and (grad_u[~touched] == 0).all()
    used = np.unique(fact.labels[ids.numpy()])
    grad_v = module.V.grad.abs().sum((1, 2)).numpy()
    assert (grad_v[used] > 0).all()
    assert "cluster_ids" in dict(module.named_buffers()) and "cluster_ids" not in dict(module.named_parameters())


def tiny_bert(**kw):
    from transformers import BertConfig

    return BertConfig(vocab_size=50, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=16, max_position_embeddings=32, **kw)


def test_replace_and_densify_on_a_hugging_face_model():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert()).eval()
    fact = random_factorization()
    module = replace_word_embeddings(model, fact)
    assert model.get_input_embeddings() is module
    ids = torch.tensor([[1, 5, 9, 2]])
    logits = model(input_ids=ids).logits
    back = densify_word_embeddings(model)
    np.testing.assert_allclose(model(input_ids=ids).logits.detach().numpy(), logits.detach().numpy(), atol=1e-5)
    np.testing.assert_array_equal(back.U, fact.U)
    with pytest.raises(ValueError, match="factorization is 51 x 12"):
        replace_word_embeddings(model, random_factorization(n=51))


def test_tied_embeddings_are_refused():
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(tiny_bert(tie_word_embeddings=True))
    with pytest.raises(ValueError, match="ties its input and output embeddings"):
        replace_word_embeddings(model, random_factorization())


@pytest.mark.slow
def test_round_trip_finetune_export_and_ort_logits_match_pytorch(minilm_path, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from projclust_onnx.nn.finetune import finetune

    texts = [("the tea was lovely",), ("stale and bitter",), ("best coffee ever",), ("arrived broken",)]
    labels = [1, 0, 1, 0]
    out = tmp_path / "ft"
    report = finetune(str(minilm_path), out, texts, labels, ProjClustConfig(compression=0.6, n_clusters=3, n_init=2,
                                                                           anneal_steps=2, max_iter=5),
                      epochs=1, batch_size=4, eval_texts=texts, eval_labels=labels, verbose=False)
    assert report.steps == 1 and report.eval_metrics["accuracy"] >= 0
    assert report.compression["parity_max_abs_diff"] <= 1e-4
    assert report.compression["embedding_compression"] >= 0.6
    ort_model = ORTModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([t for (t,) in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = report.model(**batch).logits.numpy()
    got = ort_model(**tokenizer([t for (t,) in texts], padding=True, return_tensors="np")).logits
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    assert (out / "projclust_finetune.json").is_file()
