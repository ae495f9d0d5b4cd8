"""Shared by the passes: inserting named nodes and initializers, and replacing a lookup's output.

How a stored table's rows are read (the contrib and standard forms of block quantization,
quantize_dynamic's per-tensor form) belongs to its storage format: projclust_onnx.storage.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from projclust_onnx.storage.base import CONTRIB_DOMAIN, LOOKUP_FORMS
from projclust_onnx.storage.blocks import standard_rows
from projclust_onnx.storage.registry import format_of

__all__ = ["CONTRIB_DOMAIN", "LOOKUP_FORMS", "PREFIX", "Builder", "block_quantized_lookup", "branch_weights",
           "replace_lookup", "replace_output", "standard_rows"]

PREFIX = "projclust"


class Builder:
    """Inserts named nodes before `anchor` (in the anchor's graph, which may be an If branch) and registers
    initializers under projclust/ in `graph`, the model's main graph, so that every branch shares them.

    `scope` keeps node outputs apart when the same rewrite happens in several branches;
    a constant asked for twice by name is stored once.
    """

    def __init__(self, graph: ir.Graph, anchor: ir.Node, prefix: str = PREFIX, scope: str = "") -> None:
        self.graph = graph
        self.anchor = anchor
        self.prefix = prefix
        self.scope = f"{scope}/" if scope else ""

    def const(self, name: str, array: np.ndarray) -> ir.Value:
        full = f"{self.prefix}/{name}"
        array = np.require(array, requirements="C")  # ascontiguousarray would make 0-d arrays 1-d
        existing = self.graph.initializers.get(full)
        if existing is not None:
            stored = existing.const_value
            if tuple(stored.shape) != array.shape or stored.dtype != ir.DataType.from_numpy(array.dtype):
                raise ValueError(f"initializer {full!r} already holds a different tensor")
            return existing
        tensor = ir.tensor(array, name=full)
        value = ir.Value(name=full, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                         const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def shared(self, name: str, make) -> ir.Value:
        """The initializer `name` if an earlier rewrite registered it, else const(name, make()): tables that
        every head and lookup share are built once, not once per reader."""
        existing = self.graph.initializers.get(f"{self.prefix}/{name}")
        return existing if existing is not None else self.const(name, make())

    def op(self, op_type: str, inputs: list[ir.Value], name: str, domain: str = "", **attributes) -> ir.Value:
        full = f"{self.prefix}/{self.scope}{name}"
        node = ir.node(op_type, inputs, attributes or None, domain=domain, name=full)
        node.outputs[0].name = full
        self.anchor.graph.insert_before(self.anchor, node)
        return node.outputs[0]

    def cast(self, value: ir.Value, dtype: np.dtype, name: str, source_dtype: np.dtype) -> ir.Value:
        """`value` as `dtype`, with no node when it already is."""
        if np.dtype(source_dtype) == np.dtype(dtype):
            return value
        return self.op("Cast", [value], name, to=ir.DataType.from_numpy(np.dtype(dtype)))


def block_quantized_lookup(b: Builder, q, ids: ir.Value, form: str, name: str) -> ir.Value:
    """Rows `ids` (1-D) of the stored table `q`, decoded, as its storage format emits them (storage.registry)."""
    return format_of(q).emit_lookup(b, q, ids, form, name)


def branch_weights(b: Builder, name: str, V: np.ndarray, np_dtype) -> ir.Value:
    """V as stored (float16 beside quantized U, else the table's dtype), cast to the table's dtype."""
    stored = V if V.dtype == np.float16 else V.astype(np_dtype)
    return b.cast(b.const(name, stored), np_dtype, f"{name}_{np.dtype(np_dtype).name}", stored.dtype)


def replace_lookup(graph: ir.Graph, match, out: ir.Value) -> None:
    """Let `out` stand where the match's embeddings were, keeping their name, and drop the old lookup."""
    replace_output(match.output, out, match.nodes)


def replace_output(old: ir.Value, out: ir.Value, nodes: list[ir.Node]) -> None:
    """Let `out` stand where `old` was, keeping its name, and drop `nodes` (which produced it) from their graphs."""
    old_name = old.name
    out.shape, out.type = old.shape, old.type
    ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
    for node in reversed(nodes):
        node.graph.remove(node, safe=True)
    out.name = old_name  # downstream readers (and Netron users) see the same value name
