"""Rewrite a tied LM head with the word embedding's factors: logits from U and V, no dense table.

A tied head computes logits[t] = h . A[t]. With A[t] ~ U[t] @ V[c(t)] that is
U[t] . (V[c(t)] @ h): project h once onto every branch, then one small product per
cluster::

    h2 = Reshape(hidden, [-1, d])                      (M, d)
    for c with rows:
        P_c = Gemm(h2, V_c, transB=1)                  (M, j)      V_c (j, d), the lookup's branch c
        L_c = Gemm(P_c, U_c, transB=1)                 (M, n_c)    U_c: cluster c's rows of U
    L  = Concat(L_0..L_{k-1}, axis=1)                  (M, n)      rows in cluster order
    logits = Reshape(Gather(L, vocab_order, axis=1), [*hidden.shape[:-1], n])  [+ bias]

That is n*j + k*j*d multiply-adds per position instead of n*d. U is stored once, per
cluster (`U/cluster{c}`), and read as it is stored: there is no Transpose or Slice of an
initializer for ONNX Runtime to constant-fold into a second copy. With quantized U
(int8/int4), L_c = com.microsoft.MatMulNBits(P_c, codes_c, scales_c, zero points_c): the
head reads U_c's packed codes as stored, and the lookup decodes the same bytes with
opset-13 operators (MatMulNBits needs its codes 3-D, which GatherBlockQuantized does not
read). The lookup side reads
the same U_c and V_c (FactorizeEmbeddingPass with tied=True); the cluster-order tables
(`cluster_ids`, `row_in_cluster`, `vocab_order`) are the small integer maps between
token ids and those rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.builder import CONTRIB_DOMAIN, Builder, branch_weights, replace_output
from projclust_onnx.passes.factorize_embedding import check_opset, check_shape
from projclust_onnx.passes.word_embedding import Head, search_word_embedding

from projclust_onnx.storage.quantization import BlockQuantized

if TYPE_CHECKING:
    from projclust_onnx.core.factorization import EmbeddingFactorization

logger = logging.getLogger(__name__)

__all__ = ["FactorizeHeadPass", "ClusterOrder", "cluster_rows"]


class ClusterOrder:
    """Where each token's row sits when U is stored per cluster: cluster, row within it, place in the concat."""

    def __init__(self, labels: np.ndarray, k: int) -> None:
        labels = np.asarray(labels).astype(np.int64)
        order = np.argsort(labels, kind="stable")  # token ids in cluster order
        self.sizes = np.bincount(labels, minlength=k)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.vocab_order = np.empty(len(labels), np.int64)
        self.vocab_order[order] = np.arange(len(labels))  # token id -> column of the concatenated logits
        self.row_in_cluster = self.vocab_order - self.starts[labels]
        self.members = [order[s:s + m] for s, m in zip(self.starts, self.sizes)]


@dataclass
class QuantizedRows:
    """One cluster's rows of a quantized U, in MatMulNBits' layout: codes (n_c, blocks, bytes per block),
    scales (n_c, blocks), zero points (n_c, zero-point bytes per row); `q` describes them."""

    codes: ir.Value
    scales: ir.Value
    zero_points: ir.Value
    q: BlockQuantized


def cluster_rows(b: Builder, f: EmbeddingFactorization, order: ClusterOrder,
                 np_dtype) -> list[ir.Value | QuantizedRows | None]:
    """U_c for each cluster as shared initializers under `U/cluster{c}` (None for an empty cluster): float,
    or, for quantized U, codes, scales and zero points (the bytes GatherBlockQuantized would hold, shaped
    as MatMulNBits reads them). Built once per model, whatever the number of heads and lookups."""
    out = []
    for c, rows in enumerate(order.members):
        if not len(rows):
            out.append(None)
        elif f.U_q is None:
            out.append(b.shared(f"U/cluster{c}", lambda rows=rows: f.U[rows].astype(np_dtype)))
        else:
            q = f.U_q.rows(rows)  # small beside U: codes, scales and zero points of n_c rows
            codes = b.shared(f"U/cluster{c}/codes",
                             lambda q=q: q.data.reshape(len(q.data), q.n_blocks, q.block_size * q.bits // 8))
            out.append(QuantizedRows(codes, b.shared(f"U/cluster{c}/scales", lambda q=q: q.scales),
                                     b.shared(f"U/cluster{c}/zero_points", lambda q=q: q.zero_points), q))
    return out


def branch(b: Builder, f: EmbeddingFactorization, c: int, np_dtype) -> ir.Value:
    """V_c as the initializer `branch{c}/V`, which the lookup's grouped branches read too."""
    return branch_weights(b, f"branch{c}/V", f.V[c], np_dtype)


class FactorizeHeadPass(ir.passes.InPlacePass):
    """Replace every LM-head product with the word table (MatMul with its transposed copy, MatMul with
    Transpose(table), Gemm with transB=1) by the factorized head above.

    Run it before FactorizeEmbeddingPass(tied=True), which rewrites the lookups and drops the
    table: the heads are found through the table. A quantized U (U_q) is read by com.microsoft.MatMulNBits,
    decoded in the model's dtype; fit it with compute_dtype set accordingly (fit_factorization(tied=True)).
    """

    def __init__(self, factorization: EmbeddingFactorization, ids_input: str = "input_ids") -> None:
        super().__init__()
        self.factorization = factorization
        self.ids_input = ids_input

    def requires(self, model: ir.Model) -> None:
        check_opset(model)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            match = search_word_embedding(model.graph, self.ids_input).single()
            heads = match.heads(model.graph)
        except ValueError as err:
            raise ir.passes.PreconditionError(str(err)) from err
        check_shape(self.factorization, match)
        for i, head in enumerate(heads):
            self._rewrite(model.graph, head, match.dtype.numpy(), scope=f"head{i}" if i else "head")
        return ir.passes.PassResult(model, modified=bool(heads))

    def _rewrite(self, graph: ir.Graph, head: Head, np_dtype, scope: str) -> None:
        f = self.factorization
        k, d, n = f.n_clusters, f.dim, f.n_rows
        b = Builder(graph, head.node, scope=scope)
        order = ClusterOrder(f.labels, k)
        rows = cluster_rows(b, f, order, np_dtype)
        flat = b.op("Reshape", [head.hidden, b.const("hidden_shape", np.array([-1, d], np.int64))], "hidden_2d")
        parts = []
        for c, u_c in enumerate(rows):
            if u_c is None:
                continue
            p_c = b.op("Gemm", [flat, branch(b, f, c, np_dtype)], f"cluster{c}/projected", transB=1)
            if isinstance(u_c, ir.Value):
                parts.append(b.op("Gemm", [p_c, u_c], f"cluster{c}/logits", transB=1))
                continue
            graph.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
            scales = b.cast(u_c.scales, np_dtype, f"cluster{c}/scales", u_c.q.scales.dtype)
            parts.append(b.op("MatMulNBits", [p_c, u_c.codes, scales, u_c.zero_points], f"cluster{c}/logits",
                              domain=CONTRIB_DOMAIN, K=f.rank, N=u_c.q.shape[0], bits=u_c.q.bits,
                              block_size=u_c.q.block_size))
        clustered = parts[0] if len(parts) == 1 else b.op("Concat", parts, "clustered_logits", axis=1)
        index = np.int32 if n < 2**31 else np.int64
        logits = b.op("Gather", [clustered, b.const("vocab_order", order.vocab_order.astype(index))],
                      "logits_2d", axis=1)
        if head.form == "gemm":
            if head.bias is not None:
                logits = b.op("Add", [logits, head.bias], "logits_biased")
        else:
            lead = b.op("Slice", [b.op("Shape", [head.hidden], "hidden_dims"),
                                  b.const("slice/zero", np.array([0], np.int64)),
                                  b.const("slice/last", np.array([-1], np.int64))], "leading_dims")
            shape = b.op("Concat", [lead, b.const("vocab", np.array([n], np.int64))], "logits_shape", axis=0)
            logits = b.op("Reshape", [logits, shape], "logits")
        replace_output(head.logits, logits, [head.node])
        for node in head.removed:  # the Transpose, once no head reads it
            if not node.outputs[0].uses():
                node.graph.remove(node, safe=True)
        logger.info("rewrote the LM head %s with the factors", head.describe())
