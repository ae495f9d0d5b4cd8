"""passes/head_forms.py: each head form matches its own shape and says why it does not match another."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from projclust_onnx.passes.head_forms import GemmHead, TransposedCopyHead, TransposeHead, find_heads


def graph_with(node: onnx.NodeProto, extra: list | None = None) -> tuple[ir.Graph, ir.Value, ir.Node]:
    """hidden (2, 4) and an initializer W (6, 4) read by `node` (and `extra` nodes before it)."""
    w = numpy_helper.from_array(np.ones((6, 4), np.float32), "W")
    hidden = helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 4])
    out = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph([*(extra or []), node], "g", [hidden], [out], [w])
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    weight = model.graph.initializers["W"]
    return model.graph, weight, next(n for n in model.graph if n.name == node.name)


@pytest.mark.parametrize(("attrs", "why"), [({"transB": 1}, None), ({}, "transB=0"),
                                            ({"transB": 1, "alpha": 2.0}, "alpha=2.0")], ids=["head", "B", "alpha"])
def test_gemm_head_matches_transb_one_only_and_says_which_attribute_differs(attrs, why):
    graph, weight, node = graph_with(helper.make_node("Gemm", ["h", "W"], ["logits"], name="head", **attrs))
    rule = GemmHead()
    found = rule.mismatch(node, weight)
    assert (found is None) == (why is None) and (why is None or why in found)
    assert len(rule.match(node, weight)) == (1 if why is None else 0)


def test_matmul_with_the_weight_on_the_left_is_no_copy_head():
    graph, weight, node = graph_with(helper.make_node("MatMul", ["W", "h"], ["logits"], name="left"))
    assert "does not multiply by the weight on the right" in TransposedCopyHead().mismatch(node, weight)
    assert TransposedCopyHead().match(node, weight) == []


def test_transpose_head_names_the_reader_that_is_no_matmul():
    transpose = helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0])
    graph, weight, _ = graph_with(helper.make_node("Relu", ["Wt"], ["logits"], name="relu"), [transpose])
    node = next(n for n in graph if n.name == "t")
    why = TransposeHead().mismatch(node, weight)
    assert why == "a Transpose read by a Relu, not a MatMul"
    head_graph, head_weight, _ = graph_with(helper.make_node("MatMul", ["h", "Wt"], ["logits"], name="mm"),
                                            [helper.make_node("Transpose", ["W"], ["Wt"], name="t", perm=[1, 0])])
    t = next(n for n in head_graph if n.name == "t")
    assert TransposeHead().mismatch(t, head_weight) is None
    assert [h.node.name for h in TransposeHead().match(t, head_weight)] == ["mm"]


def test_find_heads_logs_why_each_form_refused_a_reader(caplog):
    graph, weight, node = graph_with(helper.make_node("Gemm", ["h", "W"], ["logits"], name="g", transA=1))
    with caplog.at_level(logging.DEBUG, logger="projclust_onnx.passes.head_forms"):
        heads, strangers = find_heads(weight, [node], [])
    assert heads == [] and strangers == [node]
    assert any("is no gemm head" in r.message and "transA=1" in r.message for r in caplog.records)
    assert any("is no transpose head" in r.message for r in caplog.records)
