"""FactorizeEmbeddingPass and the word-embedding finder on tiny models, checked under ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projclust_onnx.passes import (
    LAYOUTS,
    FactorizeEmbeddingPass,
    factorize_embedding_pipeline,
    find_word_embedding,
    search_word_embedding,
)
from tiny_models import embedding_model

from projclust_onnx import EmbeddingFactorization


def random_factorization(n, d, k, j, seed=0, dtype=np.float32) -> EmbeddingFactorization:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    return EmbeddingFactorization(labels=labels, U=rng.standard_normal((n, j)).astype(dtype),
                                  V=rng.standard_normal((k, j, d)).astype(dtype))


def run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def expected_hidden(proto: onnx.ModelProto, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The tiny model's output when its word table is `dense`: Relu(dense[ids] + positions)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return np.maximum(dense[ids] + inits["position_table"][: ids.shape[1]], 0)


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 300), d=st.integers(2, 24), k=st.integers(1, 6), j=st.integers(1, 23),
       batch=st.integers(1, 4), seq=st.integers(1, 20), layout=st.sampled_from(LAYOUTS),
       seed=st.integers(0, 1000))
def test_rewritten_graph_computes_u_times_v_of_the_cluster(n, d, k, j, batch, seq, layout, seed):
    j = min(j, d - 1) if d > 1 else 1
    k = min(k, n)
    proto, _ = embedding_model(n, d, seed=seed)
    fact = random_factorization(n, d, k, j, seed)
    model = ir.from_proto(proto)
    result = factorize_embedding_pipeline(fact, layout)(model)
    assert result.modified
    ids = np.random.default_rng(seed).integers(0, n, (batch, seq))
    ids.flat[0], ids.flat[-1] = 0, n - 1
    (got,) = run(model, {"input_ids": ids})
    np.testing.assert_allclose(got, expected_hidden(proto, fact.reconstruct(), ids), atol=1e-5)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_op_sequence_and_second_run_reports_unmodified(layout):
    proto, _ = embedding_model(50, 8)
    model = ir.from_proto(proto)
    fact = random_factorization(50, 8, 3, 4)
    assert factorize_embedding_pipeline(fact, layout)(model).modified
    ops = op_types(model)
    assert ops.count("Gather") == 3  # U, seq_len, position table; the word lookup is gone
    assert ops.count("GatherElements") == 1  # the cluster ids: ORT's Gather quantizers leave it alone
    assert ops.count("MatMul") == (3 if layout == "grouped" else 1)
    assert ("ScatterND" in ops) == (layout == "grouped")
    names = set(model.graph.initializers)
    assert "bert.embeddings.word_embeddings.weight" not in names  # the dead table is dropped
    assert {"projclust/U", "projclust/cluster_ids", "position_table"} <= names
    assert model.graph.initializers["projclust/cluster_ids"].const_value.dtype == ir.DataType.UINT8
    assert not FactorizeEmbeddingPass(fact, layout)(model).modified
    assert op_types(model) == ops


@pytest.mark.parametrize("table_name", ["embeddings.word_embeddings.weight",
                                        "0.model.embeddings.word_embeddings.weight", "onnx::Gather_123"])
@pytest.mark.parametrize(("cast", "reshape"), [(False, False), (True, False), (False, True), (True, True)],
                         ids=["direct", "cast", "reshape", "cast+reshape"])
def test_found_by_structure_whatever_the_names_and_passthrough_ops(table_name, cast, reshape):
    proto, table = embedding_model(30, 6, cast=cast, reshape=reshape, token_type=True, table_name=table_name)
    model = ir.from_proto(proto)
    match = find_word_embedding(model.graph)
    assert match.table.name == table_name and match.shape == (30, 6)
    rejected = dict(search_word_embedding(model.graph).rejected)
    assert "indices do not come from" in rejected["position_lookup"]
    assert "indices do not come from" in rejected["tt_lookup"]
    fact = random_factorization(30, 6, 2, 3)
    factorize_embedding_pipeline(fact)(model)
    ids = np.arange(30).reshape(2, 15)
    (got,) = run(model, {"input_ids": ids, "token_type_ids": np.zeros_like(ids)})
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    want = np.maximum(fact.reconstruct()[ids] + inits["position_table"][:15] + inits["token_type_table"][0], 0)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert {"position_table", "token_type_table"} <= set(model.graph.initializers)


def test_fp16_tables_keep_their_dtype():
    proto, _ = embedding_model(40, 8, dtype=np.float16)
    model = ir.from_proto(proto)
    fact = random_factorization(40, 8, 3, 4, dtype=np.float16)
    factorize_embedding_pipeline(fact)(model)
    inits = model.graph.initializers
    assert inits["projclust/U"].const_value.dtype == ir.DataType.FLOAT16
    assert inits["projclust/branch0/V"].const_value.dtype == ir.DataType.FLOAT16
    ids = np.arange(40).reshape(4, 10)
    (got,) = run(model, {"input_ids": ids})
    want = expected_hidden(proto, fact.reconstruct().astype(np.float32), ids)
    np.testing.assert_allclose(got.astype(np.float32), want, atol=2e-2, rtol=1e-2)


def test_no_embedding_is_a_clear_error():
    model = ir.from_proto(embedding_model(20, 4, ids_from_computation=True)[0])
    with pytest.raises(ir.passes.PreconditionError, match="no word-embedding lookup found.*word_lookup: indices"):
        FactorizeEmbeddingPass(random_factorization(20, 4, 2, 2))(model)


def test_fused_embed_layer_norm_is_named_in_the_refusal():
    graph = ir.from_proto(embedding_model(20, 4)[0]).graph
    ids = graph.inputs[0]
    fused = ir.node("EmbedLayerNormalization", [ids], domain="com.microsoft", name="EmbedLayerNormalization_0")
    graph.insert_before(graph.node(0), fused)
    graph.remove(graph.node("word_lookup"), safe=False)
    with pytest.raises(ValueError, match="fused into EmbedLayerNormalization 'EmbedLayerNormalization_0'"):
        find_word_embedding(graph)


def test_two_candidates_are_refused():
    model = ir.from_proto(embedding_model(20, 4, second_lookup=True)[0])
    with pytest.raises(ir.passes.PreconditionError, match="2 word-embedding candidates found"):
        FactorizeEmbeddingPass(random_factorization(20, 4, 2, 2))(model)


def test_tied_table_is_refused_and_the_model_left_alone():
    proto, _ = embedding_model(20, 4, tied=True)
    model = ir.from_proto(proto)
    before = ir.to_proto(model).SerializeToString()
    with pytest.raises(ir.passes.PreconditionError, match="tied LM head.*Rewrite the head with the same factors"):
        FactorizeEmbeddingPass(random_factorization(20, 4, 2, 2))(model)
    assert ir.to_proto(model).SerializeToString() == before


def test_factorization_of_another_shape_is_refused():
    model = ir.from_proto(embedding_model(20, 4)[0])
    with pytest.raises(ir.passes.PreconditionError, match="factorization is 21 x 4 but the table"):
        FactorizeEmbeddingPass(random_factorization(21, 4, 2, 2))(model)


def test_old_opset_is_refused():
    model = ir.from_proto(embedding_model(20, 4, opset=11)[0])
    with pytest.raises(ir.passes.PreconditionError, match="opset >= 13"):
        FactorizeEmbeddingPass(random_factorization(20, 4, 2, 2))(model)


def test_missing_ids_input_names_the_inputs():
    model = ir.from_proto(embedding_model(20, 4, ids_name="tokens")[0])
    with pytest.raises(ir.passes.PreconditionError, match="no graph input named 'input_ids'.*tokens"):
        FactorizeEmbeddingPass(random_factorization(20, 4, 2, 2))(model)
    assert FactorizeEmbeddingPass(random_factorization(20, 4, 2, 2), ids_input="tokens")(model).modified


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout='dense'"):
        FactorizeEmbeddingPass(random_factorization(20, 4, 2, 2), layout="dense")
