"""Keep every initializer under a byte limit by splitting it into row blocks (WebGPU holds at most 256 MiB in
one buffer; Qwen2.5-0.5B's fp16 table alone is 272 MB).

A 2-D initializer over the limit is split along the axis its readers index or produce, as many equal
blocks as it takes; each reader is rewritten to read the blocks:

    Gather(W, ids)                  (row lookup, axis 0)
      -> g_b = Gather(W_b, Clip(ids - start_b, 0, rows_b - 1))
         out = Where(start_b <= ids < end_b, g_b, out)          one Where per block after the first

    Gemm(h, W, transB=1)            (a head's logits over W's rows)
      -> Concat(Gemm(h, W_b, transB=1) for each block, axis=-1)

    MatMul(h, W)                    (W of shape (K, N): split along N)
      -> Concat(MatMul(h, W_b) for each block, axis=-1)

An initializer with another reader (or read on another axis) is refused with its name and reader: the
limit would not hold, and saying so beats a model that fails to load in the browser.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.builder import Builder

__all__ = ["SplitInitializersPass", "unsplittable_readers"]


def unsplittable_readers(value: ir.Value) -> str | None:
    """Why the initializer `value` cannot be read in blocks (its readers, or its rank), None where it can."""
    tensor = value.const_value
    readers = [node for node, _ in value.uses()]
    forms = [_form(node, value) for node in readers]
    if len(tensor.shape) == 2 and None not in forms and not ("matmul" in forms and len(set(forms)) > 1):
        return None
    others = ", ".join(f"{n.op_type} {n.name!r}" for n, f in zip(readers, forms) if f is None)
    return others or ("readers of different kinds" if len(tensor.shape) == 2 else
                      f"{', '.join(n.op_type for n in readers)} (blocks are rows of a 2-D initializer)")


class SplitInitializersPass(ir.passes.InPlacePass):
    """Split every 2-D initializer larger than `max_bytes` into row (or column) blocks of at most `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = int(max_bytes)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for name, value in list(model.graph.initializers.items()):
            tensor = value.const_value
            if tensor is None or tensor.nbytes <= self.max_bytes:
                continue
            why = unsplittable_readers(value)
            if why is not None:
                raise ir.passes.PreconditionError(
                    f"initializer {name!r} ({tensor.nbytes:,} bytes, shape {list(tensor.shape)}) exceeds "
                    f"max_initializer_bytes={self.max_bytes:,} but is read by {why}, which cannot read it in "
                    "blocks; raise the limit")
            readers = [node for node, _ in value.uses()]
            axis = 1 if _form(readers[0], value) == "matmul" else 0
            array = tensor.numpy()
            n_blocks = math.ceil(tensor.nbytes / self.max_bytes)
            size = math.ceil(array.shape[axis] / n_blocks)
            while size * array.shape[1 - axis] * array.itemsize > self.max_bytes:
                size -= 1
            starts = list(range(0, array.shape[axis], size))
            for node in readers:
                _rewrite(model.graph, node, value, array, axis, starts, size)
            model.graph.initializers.pop(name)
            modified = True
        return ir.passes.PassResult(model, modified=modified)


def _form(node: ir.Node, value: ir.Value) -> str | None:
    """How `node` reads the initializer `value`: a row lookup, a head Gemm over its rows, a MatMul weight."""
    if node.domain not in ("", "ai.onnx"):
        return None
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    if node.op_type == "Gather" and node.inputs[0] is value and node.inputs[1] is not value and axis == 0:
        return "gather"
    if node.op_type == "Gemm" and len(node.inputs) == 2 and node.inputs[1] is value and node.inputs[0] is not value:
        attrs = {k: a.value for k, a in node.attributes.items()}
        if attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0:
            return "gemm"
    if node.op_type == "MatMul" and node.inputs[1] is value and node.inputs[0] is not value:
        return "matmul"
    return None


def _rewrite(graph: ir.Graph, node: ir.Node, value: ir.Value, array: np.ndarray, axis: int, starts: list[int],
             size: int) -> None:
    b = Builder(graph, node, prefix="projclust/split", scope=node.name or node.op_type)
    blocks = [b.const(f"{value.name}/block{i}", array[s:s + size] if axis == 0 else array[:, s:s + size])
              for i, s in enumerate(starts)]
    if node.op_type == "Gather":
        ids = b.op("Cast", [node.inputs[1]], "ids", to=ir.DataType.INT64)
        out = None
        for i, (start, block) in enumerate(zip(starts, blocks)):
            rows = min(size, array.shape[0] - start)
            local = b.op("Clip", [b.op("Sub", [ids, b.const(f"start{start}", np.array(start, np.int64))],
                                       f"shifted{i}"),
                                  b.const("zero", np.array(0, np.int64)),
                                  b.const(f"last{rows - 1}", np.array(rows - 1, np.int64))], f"local{i}")
            rows_b = b.op("Gather", [block, local], f"rows{i}")
            if out is None:
                out = rows_b
                continue
            inside = b.op("GreaterOrEqual", [ids, b.const(f"start{start}", np.array(start, np.int64))], f"inside{i}")
            inside = b.op("Unsqueeze", [inside, b.const("minus_one", np.array([-1], np.int64))], f"inside{i}/col")
            out = b.op("Where", [inside, rows_b, out], f"rows_upto{i}")
    else:
        parts = [b.op(node.op_type, [node.inputs[0], block], f"part{i}",
                      **({"transB": 1} if node.op_type == "Gemm" else {})) for i, block in enumerate(blocks)]
        out = b.op("Concat", parts, "joined", axis=-1)
    old = node.outputs[0]
    if old.is_graph_output():  # the output keeps its name: callers feed and fetch by name
        name = old.name
        old.name = f"{name}/unsplit"
        out.name, out.type, out.shape = name, old.type, old.shape
    ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    node.graph.remove(node, safe=True)
