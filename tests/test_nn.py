"""ProjClustEmbedding and the fine-tuning path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_run import assert_nothing_written, in_process, one_line_error

from projclust_onnx import EmbeddingFactorization, ProjClustConfig
from projclust_onnx.common.data import class_ids
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


# ---------------------------------------------------------------------- finetune's refusals and its labels
@pytest.mark.parametrize(("flags", "named"), [
    (["--method", "codebook"], "--method codebook"),
    (["--target-ratio", "8"], "--target-ratio"),
    (["--max-samples", "0"], "--max-samples=0"),
], ids=["method-codebook", "target-ratio", "max-samples"])
def test_finetune_refuses_what_it_cannot_train_before_loading_anything(tmp_path, capsys, monkeypatch, flags, named):
    """The model and the data files do not exist: the refusal is still about the flag, so it came first."""
    import projclust_onnx.common.data as data
    import projclust_onnx.nn.finetune as finetune

    def too_late(*args, **kwargs):
        raise AssertionError("data or a model was loaded before the refusal")

    monkeypatch.setattr(data, "load_records", too_late)
    monkeypatch.setattr(finetune, "finetune", too_late)
    out = tmp_path / "out"
    line = one_line_error(in_process(capsys, "finetune", "--model", tmp_path / "no-model", "--data-files",
                                     tmp_path / "no-data.csv", "--text-column", "text", "--output", out, "-q",
                                     *flags))
    assert line.startswith("projclust-onnx: error: ") and named in line
    assert "no-model" not in line and "no-data" not in line
    assert_nothing_written(out)


def test_text_labels_become_class_ids_in_sorted_order():
    assert class_ids(["pos", "neg", "pos"]) == ([1, 0, 1], None, ["neg", "pos"])
    assert class_ids(["pos", "neg", "pos"], ["neg", "neg"]) == ([1, 0, 1], [0, 0], ["neg", "pos"])


def test_numeric_labels_pass_through_unchanged():
    assert class_ids([1, 0, 1], [0, 1]) == ([1, 0, 1], [0, 1], None)
    assert class_ids([0.5, 3.25, 1.0]) == ([0.5, 3.25, 1.0], None, None)  # regression scores
    assert class_ids([np.int64(2), np.int64(0)]) == ([2, 0], None, None)


def test_evaluation_labels_of_another_kind_or_class_are_refused():
    with pytest.raises(ValueError, match="another kind"):
        class_ids(["pos", "neg"], [1, 0])
    with pytest.raises(ValueError, match="another kind"):
        class_ids([1, 0], ["pos", "neg"])
    with pytest.raises(ValueError, match=r"evaluation labels \['meh'\] never occur in the training labels"):
        class_ids(["pos", "neg"], ["pos", "meh"])
