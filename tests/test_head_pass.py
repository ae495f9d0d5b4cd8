"""The tied-head rewrite: logits from the same factors as the lookup, for every form of head."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_ir.passes.common import CheckerPass, RemoveUnusedNodesPass, TopologicalSortPass
from projclust_onnx.passes import FactorizeEmbeddingPass, FactorizeHeadPass, find_word_embedding
from projclust_onnx.passes.factorize_head import ClusterOrder
from tiny_models import embedding_model

from projclust_onnx.storage.factorization import EmbeddingFactorization

FORMS = {"copy": {"tied_copy": True}, "transpose": {"tied": True}, "gemm": {"gemm_head": True}}


def factorization(n, d, k, j, labels, seed=0, bits=None) -> EmbeddingFactorization:
    """Random factors; with `bits`, U stored in blocks of 16 and decoded in float32, as for a tied head."""
    rng = np.random.default_rng(seed)
    f = EmbeddingFactorization(labels=labels, U=rng.standard_normal((n, j)).astype(np.float32),
                               V=rng.standard_normal((k, j, d)).astype(np.float32))
    if bits is None:
        return f
    return f.quantized(bits, 16, f.reconstruct(), compute_dtype=np.float32)


def rewrite(proto, f) -> ir.Model:
    model = ir.from_proto(proto)
    ir.passes.PassManager([FactorizeHeadPass(f), FactorizeEmbeddingPass(f, tied=True), RemoveUnusedNodesPass(),
                           TopologicalSortPass(), CheckerPass(full_check=True)])(model)
    return model


def run(model: ir.Model, ids: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input_ids": ids})))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 120), d=st.integers(2, 16), k=st.integers(1, 5), j=st.integers(1, 8),
       form=st.sampled_from(sorted(FORMS)), empty=st.booleans(), seed=st.integers(0, 2**16),
       bits=st.sampled_from([None, 8, 4]))
def test_head_and_lookup_compute_the_dense_reconstruction(n, d, k, j, form, empty, seed, bits):
    """logits = hidden @ (U V)^T (+ bias) and embeddings = (U V)[ids], with clusters of any size, empty ones
    too, and U float or in 8 or 4 bits (MatMulNBits in the head, opset-13 decoding in the lookup)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    if empty and k > 1:
        labels[labels == k - 1] = 0  # the last cluster owns no row
    if bits is not None:
        j = 16 * (1 + j % 2)  # whole blocks of 16
    f = factorization(n, d, k, j, labels, seed, bits)
    proto, _ = embedding_model(n, d, position=False, **FORMS[form])
    model = rewrite(proto, f)
    ids = rng.integers(0, n, size=(2, 5))
    ids[0, 0], ids[-1, -1] = 0, n - 1
    out = run(model, ids)
    dense = f.reconstruct().astype(np.float64)
    hidden = np.maximum(dense[ids], 0)  # the tiny model: Relu of the embeddings
    np.testing.assert_allclose(out["hidden"], hidden, rtol=1e-4, atol=1e-4)
    want = hidden.reshape(-1, d) @ dense.T if form == "gemm" else hidden @ dense.T
    if form == "gemm":
        bias = next(t for t in proto.graph.initializer if t.name == "head_bias")
        want = want + np.frombuffer(bias.raw_data, np.float32) if bias.raw_data else want + np.array(bias.float_data)
    np.testing.assert_allclose(out["logits"], want, rtol=1e-4, atol=1e-3 * max(1.0, np.abs(want).max()))
    assert not {"bert.embeddings.word_embeddings.weight", "onnx::MatMul_999"} & set(model.graph.initializers)


@given(labels=st.lists(st.integers(0, 4), min_size=1, max_size=60))
def test_cluster_order_maps_tokens_to_their_rows_and_back(labels):
    labels = np.array(labels)
    order = ClusterOrder(labels, 5)
    assert sorted(order.vocab_order) == list(range(len(labels)))  # a permutation
    for t, c in enumerate(labels):
        assert order.members[c][order.row_in_cluster[t]] == t
        assert order.vocab_order[t] == order.starts[c] + order.row_in_cluster[t]


def test_head_pass_reads_u_once_without_transpose_or_slice_of_an_initializer():
    n, d, k, j = 50, 8, 3, 4
    f = factorization(n, d, k, j, np.arange(n) % k)
    model = rewrite(embedding_model(n, d, tied_copy=True)[0], f)
    inits = set(model.graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in ("Transpose", "Slice", "Concat", "Reshape", "Split"):
            assert node.inputs[0].name not in inits, f"{node.op_type} of an initializer would be constant-folded"
    u_tables = [name for name in inits if name.startswith("projclust/U/")]
    assert len(u_tables) == k and sum(model.graph.initializers[t].const_value.shape[0] for t in u_tables) == n


def test_a_wrong_factorization_shape_is_refused_and_the_model_left_alone():
    model = ir.from_proto(embedding_model(20, 4, tied_copy=True)[0])
    before = ir.to_proto(model).SerializeToString()
    with pytest.raises(ir.passes.PreconditionError, match="factorization is 21 x 4"):
        FactorizeHeadPass(factorization(21, 4, 2, 2, np.arange(21) % 2))(model)
    assert ir.to_proto(model).SerializeToString() == before


def test_heads_are_found_in_every_form():
    for form, kwargs in FORMS.items():
        model = ir.from_proto(embedding_model(30, 4, **kwargs)[0])
        heads = find_word_embedding(model.graph).heads(model.graph)
        assert [h.form for h in heads] == [form]
