"""Quantized storage in the graph: quantized U, plain table quantization, every stored input form,
and ONNX Runtime's quantizers running on our output. Checked under ONNX Runtime."""

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
    LOOKUP_FORMS,
    DensifyEmbeddingPass,
    QuantizeEmbeddingPass,
    factorize_embedding_pipeline,
    search_word_embedding,
    with_cleanup,
)
from tiny_models import embedding_model, merged_decoder_model

from projclust_onnx import EmbeddingFactorization
from projclust_onnx.storage.quantization import BlockQuantized, PerTensorQuantized, pack, pack4, unpack, unpack4


def run(model, feeds):
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def expected_hidden(proto, dense, ids):
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return np.maximum(dense[ids] + inits["position_table"][: ids.shape[1]], 0)


def random_ids(n, batch, seq, seed):
    ids = np.random.default_rng(seed).integers(0, n, (batch, seq))
    ids.flat[0], ids.flat[-1] = 0, n - 1
    return ids


@given(values=st.lists(st.integers(0, 15), min_size=1, max_size=40))
def test_pack4_round_trip(values):
    arr = np.array([values], np.uint8)
    assert np.array_equal(unpack4(pack4(arr), len(values)), arr)


@given(bits=st.sampled_from([2, 4, 8]), data=st.data())
def test_packing_round_trips_and_puts_the_first_value_in_the_lowest_bits(bits, data):
    values = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=1, max_size=40))
    arr = np.array([values], np.uint8)
    packed = pack(arr, bits)
    assert packed.shape == (1, -(-len(values) * bits // 8)) and packed.dtype == np.uint8
    assert np.array_equal(unpack(packed, len(values), bits), arr)
    assert packed[0, 0] & (2**bits - 1) == values[0]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), blocks=st.integers(1, 4), block=st.sampled_from([16, 32]), bits=st.sampled_from([4, 8]),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
def test_block_quantization_is_never_worse_than_the_full_range(n, blocks, block, bits, scale, seed):
    """Per block, the squared error is at most that of plain min/max quantization (one of the ranges tried)."""
    X = (np.random.default_rng(seed).standard_normal((n, blocks * block)) * scale).astype(np.float32)
    q = BlockQuantized.quantize(X, bits, block)
    assert q.shape == X.shape and q.data.dtype == np.uint8
    xb = X.reshape(n, blocks, block)
    lo, hi = np.minimum(xb.min(2), 0), np.maximum(xb.max(2), 0)
    step = ((hi - lo) / (2**bits - 1)).astype(np.float16).astype(np.float32)
    zero = np.clip(np.round(-lo / step), 0, 2**bits - 1)
    codes = np.clip(np.round(xb / step[..., None]) + zero[..., None], 0, 2**bits - 1)
    plain = ((((codes - zero[..., None]) * step[..., None]).astype(np.float16).astype(np.float32) - xb) ** 2).sum(2)
    ours = ((q.dequantize().reshape(n, blocks, block) - xb) ** 2).sum(2)
    assert np.all(ours <= plain * (1 + 1e-5) + 1e-12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 200), d=st.integers(2, 20), k=st.integers(1, 5), j_blocks=st.integers(1, 2),
       bits=st.sampled_from([4, 8]), layout=st.sampled_from(LAYOUTS), form=st.sampled_from(LOOKUP_FORMS),
       seed=st.integers(0, 1000))
def test_quantized_u_computes_the_decoded_factors(n, d, k, j_blocks, bits, layout, form, seed):
    """The rewrite with quantized U equals the dense reconstruction from the decoded U and float16 V."""
    k = min(k, n)
    j = 16 * j_blocks
    rng = np.random.default_rng(seed)
    proto, table = embedding_model(n, d, seed=seed)
    fact = EmbeddingFactorization(labels=rng.integers(0, k, n), U=rng.standard_normal((n, j)).astype(np.float32),
                                  V=rng.standard_normal((k, j, d)).astype(np.float32))
    fact = fact.quantized(bits, 16, table)
    model = ir.from_proto(proto)
    assert factorize_embedding_pipeline(fact, layout, lookup_form=form)(model).modified
    ops = [node.op_type for node in model.graph]
    assert ("GatherBlockQuantized" in ops) == (form == "contrib")
    ids = random_ids(n, 2, 7, seed)
    (got,) = run(model, {"input_ids": ids})
    np.testing.assert_allclose(got, expected_hidden(proto, fact.reconstruct(), ids), atol=1e-4, rtol=1e-4)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


@pytest.mark.parametrize("form", LOOKUP_FORMS)
@pytest.mark.parametrize(("bits", "block"), [(4, 32), (8, 16), (4, 16)])
def test_plain_quantization_pass(form, bits, block):
    proto, table = embedding_model(40, 32)
    q = BlockQuantized.quantize(table, bits, block)
    model = ir.from_proto(proto)
    assert with_cleanup(QuantizeEmbeddingPass(q, lookup_form=form))(model).modified
    ids = random_ids(40, 2, 5, 0)
    (got,) = run(model, {"input_ids": ids})
    np.testing.assert_allclose(got, expected_hidden(proto, q.dequantize(), ids), atol=1e-5)
    if form == "contrib":
        assert search_word_embedding(model.graph).single().storage == f"int{bits} block {block}"
    else:  # the standard form is not mistaken for a float table (its scales are gathered by the ids)
        with pytest.raises(ValueError, match="already stored block-quantized in the standard-opset form"):
            search_word_embedding(model.graph).single()


@pytest.mark.parametrize("quantize", [lambda t: BlockQuantized.quantize(t, 4, 32), PerTensorQuantized.quantize],
                         ids=["int4 block 32", "int8 per-tensor"])
def test_a_second_run_finds_its_own_work_and_reports_unmodified(quantize):
    """modified comes from the work done: the lookup already reads this table in this storage."""
    proto, table = embedding_model(40, 32)
    q = quantize(table)
    model = ir.from_proto(proto)
    assert with_cleanup(QuantizeEmbeddingPass(q))(model).modified
    ops = [n.op_type for n in model.graph]
    again = QuantizeEmbeddingPass(q)(model)
    assert not again.modified and [n.op_type for n in model.graph] == ops
    other = quantize(table[::-1].copy())  # another table in the same storage is written
    assert QuantizeEmbeddingPass(other)(model).modified


def test_densify_reports_unmodified_when_the_table_already_holds_the_values():
    proto, table = embedding_model(40, 8)
    model = ir.from_proto(proto)
    assert not DensifyEmbeddingPass(table)(model).modified  # the float table already is this table
    assert DensifyEmbeddingPass(table * 2)(model).modified
    assert not DensifyEmbeddingPass(table * 2)(model).modified


def test_per_tensor_form_is_quantize_dynamics():
    proto, table = embedding_model(40, 8)
    q = PerTensorQuantized.quantize(table)
    model = ir.from_proto(proto)
    with_cleanup(QuantizeEmbeddingPass(q))(model)
    assert [n.op_type for n in model.graph][:2] == ["Gather", "DequantizeLinear"]
    match = search_word_embedding(model.graph).single()
    assert match.storage == "int8 per-tensor" and np.allclose(match.dense(), q.dequantize())


@pytest.mark.parametrize("form", LOOKUP_FORMS)
@pytest.mark.parametrize("storage", ["int4 block 16", "int8 per-tensor"])
def test_plain_quantization_rewrites_the_lookups_of_both_branches_of_a_merged_decoder(storage, form):
    """decoder_model_merged.onnx reads the table in both branches of an If: every lookup is rewritten, both read
    the same quantized initializers, and the dense table is gone."""
    proto, table = merged_decoder_model(50, 16)
    q = BlockQuantized.quantize(table, 4, 16) if storage.startswith("int4") else PerTensorQuantized.quantize(table)
    model = ir.from_proto(proto)
    result = with_cleanup(QuantizeEmbeddingPass(q, lookup_form=form))(model)
    assert result.modified and "embed_tokens.weight" not in model.graph.initializers
    readers = [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.op_type == "Gather"
               and n.inputs[0] is not None and n.inputs[0].name == "embed_tokens.weight"]
    assert not readers
    ids = random_ids(50, 2, 5, 0)
    dense = q.dequantize()[ids]
    for use_cache, want in ((True, np.maximum(dense, 0)), (False, -dense)):
        (got,) = run(model, {"input_ids": ids, "use_cache_branch": np.array([use_cache])})
        np.testing.assert_allclose(got, want, atol=1e-5)
    matches = search_word_embedding(model.graph).matches
    if form == "contrib" or storage.endswith("per-tensor"):
        assert len(matches) == 2 and {m.storage for m in matches} == {storage}
        assert len({id(m.table) for m in matches}) == 1  # one stored table for both branches
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def ort_quantized(proto, tmp_path, how):
    """The tiny model quantized by ONNX Runtime itself: quantize_dynamic or MatMulNBitsQuantizer (4-bit Gather)."""
    src, dst = tmp_path / f"src_{how}.onnx", tmp_path / f"dst_{how}.onnx"
    onnx.save(proto, str(src))
    if how == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["Gather"], weight_type=QuantType.QUInt8)
        return onnx.load(str(dst))
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=how == "nbits-sym",
                                          op_types_to_quantize=("Gather", "MatMul"), quant_axes=(("Gather", 1),))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
    quantizer.process()
    return quantizer.model.model


@pytest.mark.parametrize("how", ["dynamic", "nbits", "nbits-sym"])
def test_tables_quantized_by_onnxruntime_are_found_and_dequantized(tmp_path, how):
    """Before compress: ORT's quantized tables are read as the runtime decodes them."""
    proto, _ = embedding_model(64, 32, position=False)
    quantized = ort_quantized(proto, tmp_path, how)
    model = ir.from_proto(quantized)
    match = search_word_embedding(model.graph).single()
    assert match.storage == ("int8 per-tensor" if how == "dynamic" else "int4 block 32")
    ids = random_ids(64, 2, 5, 1)
    (want,) = run(quantized, {"input_ids": ids})
    np.testing.assert_allclose(np.maximum(match.dense()[ids], 0), want, atol=1e-6)
    # the dense reference of the same model reproduces it exactly
    dense = ir.from_proto(quantized)
    with_cleanup(DensifyEmbeddingPass(match.dense()))(dense)
    np.testing.assert_allclose(run(dense, {"input_ids": ids})[0], want, atol=1e-6)


@pytest.mark.parametrize("quantize_u", [None, 4])
@pytest.mark.parametrize("how", ["dynamic", "nbits"])
def test_onnxruntime_quantizers_run_on_our_output(tmp_path, how, quantize_u):
    """After compress: quantize_dynamic and MatMulNBitsQuantizer (Gather included) run, and the result loads."""
    proto, table = embedding_model(64, 32, position=False)
    rng = np.random.default_rng(0)
    fact = EmbeddingFactorization(labels=rng.integers(0, 3, 64), U=rng.standard_normal((64, 16)).astype(np.float32),
                                  V=rng.standard_normal((3, 16, 32)).astype(np.float32))
    if quantize_u:
        fact = fact.quantized(quantize_u, 16, table)
    model = ir.from_proto(proto)
    factorize_embedding_pipeline(fact)(model)
    ours = ir.to_proto(model)
    again = ort_quantized(ours, tmp_path, how)
    onnx.checker.check_model(again)
    ids = random_ids(64, 2, 5, 2)
    (got,) = run(again, {"input_ids": ids})
    want = np.maximum(fact.reconstruct()[ids], 0)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 0.25 * np.abs(want).max()  # quantized twice: close, not equal
    ids_table = [t for t in again.graph.initializer if t.name == "projclust/cluster_ids"]
    assert ids_table and onnx.numpy_helper.to_array(ids_table[0]).dtype == np.uint8  # left alone


def test_uint8_table_read_another_way_is_not_called_standard_form():
    """Issue 16, 6: a uint8 table gathered without one per-tensor DequantizeLinear (here: per-row scales) was
    called "standard-opset block-quantized", which only our own standard form is."""
    from onnx import TensorProto, helper, numpy_helper

    codes = np.random.default_rng(0).integers(0, 255, (40, 8), dtype=np.uint8)
    scales, zero = np.full(40, 0.1, np.float32), np.zeros(40, np.uint8)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["rows"], name="word_lookup"),
         helper.make_node("DequantizeLinear", ["rows", "scale", "zero"], ["out"], axis=0, name="per_row")],
        "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [40])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [40, 8])],
        [numpy_helper.from_array(codes, "table"), numpy_helper.from_array(scales, "scale"),
         numpy_helper.from_array(zero, "zero")])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(ValueError) as caught:
        search_word_embedding(model.graph).single()
    assert "standard-opset" not in str(caught.value)
    assert "the word table 'table' is stored as uint8 that 'word_lookup' gathers without one per-tensor " \
           "DequantizeLinear after it" in str(caught.value)
