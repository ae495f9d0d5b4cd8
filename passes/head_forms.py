"""The forms of a tied LM head, one small rule class each: `match` finds it, `emit` rewrites it.

A tied head computes logits = hidden @ table^T [+ bias] in one of three forms::

    TransposedCopyHead:  MatMul(hidden, T)              T a separate initializer equal to table^T
                                                        (Optimum's export without accelerate)
    TransposeHead:       MatMul(hidden, Transpose(table))
    GemmHead:            Gemm(hidden, table, transB=1[, bias])

`HEAD_FORMS` collects them, as onnxscript collects rewrite rules in a rule set. Every form
emits the same factorized logits, logits[t] = U[t] . (V[c(t)] @ h), and shapes them back::

    h2 = Reshape(hidden, [-1, d])                      (M, d)
    for c with rows:
        P_c = Gemm(h2, V_c, transB=1)                  (M, j)      V_c (j, d), the lookup's branch c
        L_c = Gemm(P_c, U_c, transB=1)                 (M, n_c)    U_c: cluster c's rows of U
    L  = Concat(L_0..L_{k-1}, axis=1)                  (M, n)      rows in cluster order
    logits = Gather(L, vocab_order, axis=1)            (M, n)
    MatMul forms: Reshape(logits, [*hidden.shape[:-1], n]);  GemmHead: logits [+ bias]

That is n*j + k*j*d multiply-adds per position instead of n*d. With quantized U (int8/int4),
L_c = com.microsoft.MatMulNBits(P_c, codes_c, scales_c, zero points_c): the head reads U_c's
packed codes as stored (factors.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.builder import CONTRIB_DOMAIN, Builder, replace_output
from projclust_onnx.passes.factors import ClusterOrder, branch, cluster_rows

if TYPE_CHECKING:
    from projclust_onnx.storage.factorization import EmbeddingFactorization

logger = logging.getLogger(__name__)

__all__ = ["HEAD_FORMS", "GemmHead", "Head", "HeadForm", "TransposeHead", "TransposedCopyHead", "find_heads",
           "head_copies", "not_a_head_error", "rewrite_head"]


@dataclass(frozen=True)
class Head:
    """One LM-head product with the table: logits = hidden @ table^T [+ bias].

    node: the MatMul or Gemm; rule: its HeadForm; weight: what the node reads as its second input (the
    transposed copy, the Transpose's output, or the table); removed: nodes a rewrite drops besides `node`
    (the Transpose).
    """

    node: ir.Node
    rule: HeadForm
    weight: ir.Value
    removed: tuple[ir.Node, ...] = ()

    @property
    def form(self) -> str:
        """The form's name as reports show it: "copy", "transpose" or "gemm"."""
        return self.rule.name

    @property
    def hidden(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def logits(self) -> ir.Value:
        return self.node.outputs[0]

    def describe(self) -> str:
        return f"{self.node.op_type} {self.node.name!r} ({self.form})"


class HeadForm:
    """One form of tied head. `reads_copy`: the form reads its own transposed copy of the table (so it
    can stay dense while the table is replaced) rather than the table itself."""

    name: ClassVar[str]
    reads_copy: ClassVar[bool] = False

    def match(self, node: ir.Node, weight: ir.Value) -> list[Head]:
        """The heads `node` (a reader of `weight`: the table, or a transposed copy) stands for; [] if none."""
        return [] if self.mismatch(node, weight) else self.heads(node, weight)

    def mismatch(self, node: ir.Node, weight: ir.Value) -> str | None:
        """Why `node` is not a head of this form (as onnxscript's MatchResult.fail says it); None if it is."""
        raise NotImplementedError

    def heads(self, node: ir.Node, weight: ir.Value) -> list[Head]:
        """The heads of a `node` that matches."""
        return [Head(node, self, weight)]

    def emit(self, b: Builder, head: Head, f: EmbeddingFactorization, np_dtype) -> ir.Value:
        """The factorized logits standing for `head`'s output, inserted before it."""
        return self.shape_logits(b, head, factorized_logits(b, head.hidden, f, np_dtype), f.n_rows)

    def shape_logits(self, b: Builder, head: Head, logits: ir.Value, n: int) -> ir.Value:
        """(M, n) logits shaped as the head's output: [*hidden.shape[:-1], n]."""
        lead = b.op("Slice", [b.op("Shape", [head.hidden], "hidden_dims"),
                              b.const("slice/zero", np.array([0], np.int64)),
                              b.const("slice/last", np.array([-1], np.int64))], "leading_dims")
        shape = b.op("Concat", [lead, b.const("vocab", np.array([n], np.int64))], "logits_shape", axis=0)
        return b.op("Reshape", [logits, shape], "logits")


class TransposedCopyHead(HeadForm):
    """MatMul(hidden, T), T an initializer holding table^T (found by content: `reads_copy`)."""

    name = "copy"
    reads_copy = True

    def mismatch(self, node: ir.Node, weight: ir.Value) -> str | None:
        return _matmul_mismatch(node, weight)


class TransposeHead(HeadForm):
    """MatMul(hidden, Transpose(table)): every reader of the Transpose is such a MatMul."""

    name = "transpose"

    def mismatch(self, node: ir.Node, weight: ir.Value) -> str | None:
        if node.op_type != "Transpose":
            return f"a {node.op_type}, not a Transpose"
        if not _is_2d_transpose(node):
            return "a Transpose of other axes than [1, 0]"
        transposed = node.outputs[0]
        readers = [n for n, _ in transposed.uses()]
        if not readers:
            return "a Transpose nothing reads"
        why = next((why for n in readers if (why := _matmul_mismatch(n, transposed))), None)
        return f"a Transpose read by {why}" if why else None

    def heads(self, node: ir.Node, weight: ir.Value) -> list[Head]:
        transposed = node.outputs[0]
        return [Head(n, self, transposed, (node,)) for n, _ in transposed.uses()]


class GemmHead(HeadForm):
    """Gemm(hidden, table, transB=1[, bias]), 2-D logits."""

    name = "gemm"

    def mismatch(self, node: ir.Node, weight: ir.Value) -> str | None:
        if node.op_type != "Gemm":
            return f"a {node.op_type}, not a Gemm"
        return _gemm_mismatch(node, weight)

    def shape_logits(self, b: Builder, head: Head, logits: ir.Value, n: int) -> ir.Value:
        bias = head.node.inputs[2] if len(head.node.inputs) > 2 else None
        return logits if bias is None else b.op("Add", [logits, bias], "logits_biased")


# The rule set: every head form the finder recognises and the rewrite emits.
HEAD_FORMS: tuple[HeadForm, ...] = (TransposedCopyHead(), TransposeHead(), GemmHead())


def find_heads(table: ir.Value, readers: list[ir.Node],
               copies: list[ir.Value]) -> tuple[list[Head], list[ir.Node]]:
    """(heads, strangers): the table's `readers` (besides its lookups) and the readers of its transposed
    `copies`, each matched against the forms that read such a weight; the nodes no form matches."""
    heads, strangers = [], []
    for weight, nodes, is_copy in [(table, readers, False),
                                   *((copy, [n for n, _ in copy.uses()], True) for copy in copies)]:
        rules = [rule for rule in HEAD_FORMS if rule.reads_copy == is_copy]
        for node in nodes:
            found = next((h for rule in rules if (h := rule.match(node, weight))), None)
            if found is None:
                for rule in rules:
                    logger.debug("%s %r is no %s head: %s", node.op_type, node.name, rule.name,
                                 rule.mismatch(node, weight))
                logger.info("rejected %s %r as an LM head: no head form matches it", node.op_type, node.name)
                strangers.append(node)
            else:
                heads += found
    return heads, strangers


def not_a_head_error(table: ir.Value, strangers: list[ir.Node]) -> str:
    """The refusal for readers of the table that are neither lookups nor heads."""
    users = ", ".join(f"{n.op_type} {n.name!r}" for n in strangers)
    return (f"the word-embedding table {table.name!r} (or its transposed copy) is also read by {users}, which is "
            "neither a lookup nor an LM head (MatMul or Gemm with the table's transpose); such a model is not "
            "supported")


def head_copies(heads) -> list[ir.Value]:
    """The distinct transposed copies of the table that `heads` read (one per file, whatever the branches)."""
    return list({id(h.weight): h.weight for h in heads if h.rule.reads_copy}.values())


def rewrite_head(graph: ir.Graph, head: Head, f: EmbeddingFactorization, np_dtype, scope: str) -> None:
    """Replace `head`'s product with the factorized logits its form emits; drop the Transpose once unread."""
    b = Builder(graph, head.node, scope=scope)
    replace_output(head.logits, head.rule.emit(b, head, f, np_dtype), [head.node])
    for node in head.removed:  # the Transpose, once no head reads it
        if not node.outputs[0].uses():
            node.graph.remove(node, safe=True)
    logger.info("rewrote the LM head %s with the factors", head.describe())


def factorized_logits(b: Builder, hidden: ir.Value, f: EmbeddingFactorization, np_dtype) -> ir.Value:
    """(M, n) logits of `hidden` against the factorized table, columns in vocabulary order."""
    k, d, n = f.n_clusters, f.dim, f.n_rows
    order = ClusterOrder(f.labels, k)
    rows = cluster_rows(b, f, order, np_dtype)
    flat = b.op("Reshape", [hidden, b.const("hidden_shape", np.array([-1, d], np.int64))], "hidden_2d")
    parts = []
    for c, u_c in enumerate(rows):
        if u_c is None:
            continue
        p_c = b.op("Gemm", [flat, branch(b, f, c, np_dtype)], f"cluster{c}/projected", transB=1)
        if isinstance(u_c, ir.Value):
            parts.append(b.op("Gemm", [p_c, u_c], f"cluster{c}/logits", transB=1))
            continue
        b.graph.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
        scales = b.cast(u_c.scales, np_dtype, f"cluster{c}/scales", u_c.q.scales.dtype)
        parts.append(b.op("MatMulNBits", [p_c, u_c.codes, scales, u_c.zero_points], f"cluster{c}/logits",
                          domain=CONTRIB_DOMAIN, K=f.rank, N=u_c.q.shape[0], bits=u_c.q.bits,
                          block_size=u_c.q.block_size))
    clustered = parts[0] if len(parts) == 1 else b.op("Concat", parts, "clustered_logits", axis=1)
    index = np.int32 if n < 2**31 else np.int64
    return b.op("Gather", [clustered, b.const("vocab_order", order.vocab_order.astype(index))], "logits_2d", axis=1)


def _is_2d_transpose(node: ir.Node) -> bool:
    perm = node.attributes.get("perm")
    return perm is None or list(perm.as_ints()) == [1, 0]


def _matmul_mismatch(node: ir.Node, weight: ir.Value) -> str | None:
    """Why `node` is not MatMul(hidden, weight); None if it is."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return f"a {node.domain + '.' if node.domain else ''}{node.op_type}, not a MatMul"
    if len(node.inputs) != 2 or node.inputs[1] is not weight:
        return "a MatMul that does not multiply by the weight on the right"
    if node.inputs[0] is weight:
        return "a MatMul of the weight by itself"
    return None


def _gemm_mismatch(node: ir.Node, table: ir.Value) -> str | None:
    """Why the Gemm `node` is not Gemm(hidden, table, transB=1) with alpha = beta = 1; None if it is."""
    attrs = node.attributes

    def attr(name: str, default):
        return attrs[name].value if name in attrs else default

    if node.inputs[1] is not table or node.inputs[0] is table:
        return "a Gemm that does not multiply hidden states by the table as B"
    wanted = (("transB", 0, 1), ("transA", 0, 0), ("alpha", 1.0, 1.0), ("beta", 1.0, 1.0))
    wrong = [f"{name}={attr(name, default)}" for name, default, want in wanted if attr(name, default) != want]
    return f"a Gemm with {', '.join(wrong)} (a head has transB=1, transA=0, alpha=beta=1)" if wrong else None
