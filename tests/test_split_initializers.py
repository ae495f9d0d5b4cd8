"""SplitInitializersPass: every initializer under the limit, outputs unchanged under ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from projclust_onnx.passes import SplitInitializersPass, with_cleanup

N, D = 103, 8  # rows do not divide evenly into blocks


def model(head: str) -> onnx.ModelProto:
    """ids -> Gather(E) -> (tokens, D) -> a head reading E (Gemm transB=1) or a (D, N) MatMul weight."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((N, D)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.array([-1, D], np.int64), "flat")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["rows"]), helper.make_node("Reshape", ["rows", "flat"], ["h"])]
    if head == "gemm":
        nodes.append(helper.make_node("Gemm", ["h", "E"], ["logits"], transB=1))
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((D, N)).astype(np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["h", "W"], ["logits"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["t", N])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def run(proto: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"ids": ids})[0]


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_split_keeps_every_initializer_under_the_limit_and_the_outputs(head):
    proto = model(head)
    ids = np.array([[0, 1, 50, N - 1], [33, 34, 35, 102]], np.int32)
    want = run(proto, ids)
    limit = 4 * D * 30  # about a third of the table: blocks of 30 rows, the last one shorter
    ir_model = ir.from_proto(proto)
    result = with_cleanup(SplitInitializersPass(limit))(ir_model)
    assert result.modified
    assert max(v.const_value.nbytes for v in ir_model.graph.initializers.values()) <= limit
    assert "E" not in ir_model.graph.initializers and "W" not in ir_model.graph.initializers
    np.testing.assert_allclose(run(ir.to_proto(ir_model), ids), want, rtol=1e-6, atol=1e-6)
    assert not SplitInitializersPass(limit)(ir_model).modified  # a second run finds nothing to do


def test_a_reader_that_cannot_read_blocks_is_named():
    proto = model("gemm")
    proto.graph.node.append(helper.make_node("ReduceSum", ["E"], ["total"]))
    proto.graph.output.append(helper.make_tensor_value_info("total", TensorProto.FLOAT, None))
    with pytest.raises(ir.passes.PreconditionError, match="'E'.*ReduceSum.*raise the limit"):
        SplitInitializersPass(1024)(ir.from_proto(proto))


def test_compress_with_max_initializer_bytes(tmp_path):
    from tiny_models import embedding_model, write_model_dir

    from projclust_onnx import ProjClustCompressor, ProjClustConfig

    src = write_model_dir(tmp_path / "src", embedding_model(600, 16)[0]).parent
    config = ProjClustConfig(n_clusters=2, rank=8, n_init=1, anneal_steps=2, max_initializer_bytes=4096)
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", config)
    (entry,) = report.files
    assert entry["largest_initializer_bytes"] <= 4096 and report.parity_max_abs_diff <= report.parity_tolerance
    assert ProjClustConfig.from_pretrained(tmp_path / "out").max_initializer_bytes == 4096
