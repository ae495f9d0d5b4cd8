"""pipeline/parity.py: which nodes quantize activations (the check then compares outputs by cosine)."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from projclust_onnx.pipeline.parity import quantized_activations


def one_node_model(op_type: str, domain: str = "", **attrs) -> ir.Model:
    node = helper.make_node(op_type, ["x", "w"], ["y"], name="n", domain=domain, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                            helper.make_tensor_value_info("w", TensorProto.UINT8, [4, 1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets))


@pytest.mark.parametrize(("attrs", "quantizes"), [({"accuracy_level": 4}, True), ({"accuracy_level": 0}, False),
                                                  ({}, False)], ids=["level 4", "level 0", "unset"])
def test_matmulnbits_quantizes_activations_at_accuracy_level_4_only(attrs, quantizes):
    """Issue 31: MatMulNBits with accuracy_level=4 quantizes activations on CPU, and failed the check by 0.0085."""
    model = one_node_model("MatMulNBits", "com.microsoft", K=4, N=4, bits=4, block_size=16, **attrs)
    assert bool(quantized_activations(model)) == quantizes


@pytest.mark.parametrize("op_type", ["DynamicQuantizeLinear", "MatMulIntegerToFloat", "QGemm"])
def test_the_other_activation_quantizers_are_known(op_type):
    assert quantized_activations(one_node_model(op_type, "com.microsoft" if op_type != "DynamicQuantizeLinear"
                                                else ""))
