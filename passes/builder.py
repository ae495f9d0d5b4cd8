"""Shared by the passes: inserting named nodes and initializers, and the quantized row lookups.

Two forms read the same stored tensors (quantization.BlockQuantized)::

    "contrib":  com.microsoft.GatherBlockQuantized(codes, ids, scales, zero points)  -> rows (T, m)
    "standard": Gather(codes, ids), Gather(scales, ids), Gather(zero points, ids)
                [4-bit: Cast(int32), Mod 16 / Div 16, interleave]  -> codes (T, m), zeros (T, m/B)
                (Cast(codes) - Cast(zeros)) * scales, per block of B                  -> rows (T, m)

The standard form uses opset-13 operators only, for runtimes without contrib ops.
quantize_dynamic's per-tensor form is Gather(uint8 table, ids) -> DequantizeLinear.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

PREFIX = "projclust"
LOOKUP_FORMS = ("contrib", "standard")
CONTRIB_DOMAIN = "com.microsoft"


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
    """Rows `ids` (1-D) of the BlockQuantized `q`, decoded to q.scales' dtype, of shape (T, m)."""
    if form not in LOOKUP_FORMS:
        raise ValueError(f"form={form!r} must be one of {LOOKUP_FORMS}")
    data = b.const(f"{name}/codes", q.data)
    scales = b.const(f"{name}/scales", q.scales)
    zeros = b.const(f"{name}/zero_points", q.zero_points)
    if form == "contrib":
        b.graph.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
        return b.op("GatherBlockQuantized", [data, ids, scales, zeros], f"{name}/rows", domain=CONTRIB_DOMAIN,
                    gather_axis=0, quantize_axis=1, block_size=q.block_size, bits=q.bits)
    return standard_rows(b, q, data, scales, zeros, ids, name)


def standard_rows(b: Builder, q, data: ir.Value, scales: ir.Value, zeros: ir.Value, ids: ir.Value, name: str,
                  compute_dtype=None) -> ir.Value:
    """Rows `ids` of BlockQuantized storage `q` held in `data` (codes, (n, m*bits/8), or (n, blocks, bytes per
    block) as MatMulNBits keeps them), `scales` and `zeros`, decoded with opset-13 operators in the scales'
    dtype, or in `compute_dtype` (then the scales are cast first, exactly)."""
    n, m = q.shape
    n_blocks = q.n_blocks
    codes = b.op("Gather", [data, ids], f"{name}/row_codes")
    if len(data.shape) == 3:
        codes = b.op("Reshape", [codes, b.const(f"{name}/packed_shape", np.array([-1, m * q.bits // 8], np.int64))],
                     f"{name}/row_codes_2d")
    row_zeros = b.op("Gather", [zeros, ids], f"{name}/row_zero_points")
    if q.bits == 4:
        codes = _unpack4(b, codes, m, f"{name}/codes")
        row_zeros = _unpack4(b, row_zeros, n_blocks, f"{name}/zero_points")
    row_scales = b.op("Gather", [scales, ids], f"{name}/row_scales")
    if compute_dtype is not None:
        row_scales = b.cast(row_scales, compute_dtype, f"{name}/row_scales_cast", q.scales.dtype)
    dtype = ir.DataType.from_numpy(np.dtype(compute_dtype or q.scales.dtype))
    blocks = b.op("Reshape", [b.op("Cast", [codes], f"{name}/codes_float", to=dtype),
                              b.const(f"{name}/block_shape", np.array([-1, n_blocks, q.block_size], np.int64))],
                  f"{name}/code_blocks")
    centred = b.op("Sub", [blocks, b.op("Unsqueeze", [b.op("Cast", [row_zeros], f"{name}/zeros_float", to=dtype),
                                                      b.const(f"{name}/axis2", np.array([2], np.int64))],
                                        f"{name}/zeros_col")], f"{name}/centred")
    scaled = b.op("Mul", [centred, b.op("Unsqueeze", [row_scales, b.const(f"{name}/axis2_s", np.array([2], np.int64))],
                                        f"{name}/scales_col")], f"{name}/scaled")
    return b.op("Reshape", [scaled, b.const(f"{name}/row_shape", np.array([-1, m], np.int64))], f"{name}/rows")


def _unpack4(b: Builder, packed: ir.Value, length: int, name: str) -> ir.Value:
    """(T, ceil(length/2)) uint8, two 4-bit values a byte, low nibble first -> (T, length) int32."""
    wide = b.op("Cast", [packed], f"{name}/int32", to=ir.DataType.INT32)
    sixteen = b.const(f"{name}/sixteen", np.array(16, np.int32))
    low = b.op("Mod", [wide, sixteen], f"{name}/low", fmod=0)
    high = b.op("Div", [wide, sixteen], f"{name}/high")
    last = b.const(f"{name}/last_axis", np.array([-1], np.int64))
    pairs = b.op("Concat", [b.op("Unsqueeze", [low, last], f"{name}/low_col"),
                            b.op("Unsqueeze", [high, last], f"{name}/high_col")], f"{name}/pairs", axis=-1)
    width = 2 * ((length + 1) // 2)  # a static width: a branch may have no rows, and [0, -1] cannot reshape those
    flat = b.op("Reshape", [pairs, b.const(f"{name}/pairs_shape", np.array([-1, width], np.int64))], f"{name}/values")
    if length % 2 == 0:
        return flat
    return b.op("Slice", [flat, b.const(f"{name}/start", np.array([0], np.int64)),
                          b.const(f"{name}/end", np.array([length], np.int64)),
                          b.const(f"{name}/axis1", np.array([1], np.int64))], f"{name}/cut")


def branch_weights(b: Builder, name: str, V: np.ndarray, np_dtype) -> ir.Value:
    """V as stored (float16 beside quantized U, else the table's dtype), cast to the table's dtype."""
    stored = V if V.dtype == np.float16 else V.astype(np_dtype)
    return b.cast(b.const(name, stored), np_dtype, f"{name}_{np.dtype(np_dtype).name}", stored.dtype)


def per_tensor_lookup(b: Builder, q, ids: ir.Value, name: str) -> ir.Value:
    """Rows `ids` of a PerTensorQuantized table, as quantize_dynamic emits it: Gather -> DequantizeLinear."""
    codes = b.op("Gather", [b.const(f"{name}/codes", q.data), ids], f"{name}/row_codes")
    return b.op("DequantizeLinear", [codes, b.const(f"{name}/scale", q.scale),
                                     b.const(f"{name}/zero_point", q.zero_point)], f"{name}/rows")


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
