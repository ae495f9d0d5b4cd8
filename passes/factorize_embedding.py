"""Rewrite the word-embedding lookup into the k-branch subgraph of a factorized table.

Row t of the table becomes U[t] @ V[c(t)]: the model stores U (n x j), one cluster
id per row (uint8 up to 256 clusters) and k branch matrices V_c (j x d). Both
layouts share the front and the back; only the middle differs.

Common front and back::

    ids (any shape) -> Reshape[-1] -> flat (T,)
    flat -> Gather(U)                   -> u   (T, j)   float U
    flat -> quantized lookup of U [-> Cast] -> u (T, j)   int8/int4 U (builder.py draws both forms)
    flat -> GatherElements(cluster_ids) -> Cast(int64) -> cid (T,)
    ...middle...                        -> y   (T, d)   V_c stored float16 with quantized U, Cast once
    y -> Reshape[shape(ids) + [d]] -> embeddings (*ids.shape, d)

The cluster ids are read by GatherElements, not Gather, so that ONNX Runtime's Gather
quantizers (quantize_dynamic, MatMulNBitsQuantizer) leave the 1-D uint8 id table alone
and can run on our output.

"grouped" middle (j*d multiply-adds per token; the default, fastest on CPU)::

    zeros (T, d) = ConstantOfShape
    for c in 0..k-1:
        rows_c = Transpose(NonZero(Equal(cid, c)))       (m_c, 1)
        y_c    = MatMul(GatherND(u, rows_c), V_c)         (m_c, d)
        out    = ScatterND(out, rows_c, y_c)

With a tied head (tied=True), the same pass rewrites the heads first (each by its form's
rule, head_forms.py), then the lookups; U is stored per cluster (U_c, the rows of cluster c,
factors.py) and the grouped branches of the lookup read it there, as the heads do::

    local = GatherElements(row_in_cluster, flat)         (T,)  each token's row within its cluster
    for c with rows:
        y_c = MatMul(Gather(U_c, GatherND(local, rows_c)), V_c)

"onehot" middle (the paper's one fully-connected layer over the branch outputs;
k*j*d multiply-adds per token, fewer and more regular ops)::

    mask  = Cast(Equal(Unsqueeze(cid, 1), [0..k-1]))      (T, k)
    block = Reshape(Unsqueeze(mask, 2) * Unsqueeze(u, 1)) (T, k*j)
    y     = MatMul(block, V_stacked)                      (k*j, d)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.analysis import WordTableAnalysis
from projclust_onnx.passes.builder import (
    LOOKUP_FORMS,
    Builder,
    block_quantized_lookup,
    branch_weights,
    replace_lookup,
    standard_rows,
)
from projclust_onnx.passes.factors import ClusterOrder, branch, cluster_rows
from projclust_onnx.passes.head_forms import rewrite_head
from projclust_onnx.passes.result import RewriteResult, analysis_for, written_since
from projclust_onnx.passes.word_embedding import EmbeddingMatch

if TYPE_CHECKING:
    from projclust_onnx.storage.factorization import EmbeddingFactorization

logger = logging.getLogger(__name__)

__all__ = ["LAYOUTS", "DEFAULT_LAYOUT", "FactorizeEmbeddingPass", "check_opset"]

LAYOUTS = ("grouped", "onehot")
DEFAULT_LAYOUT = "grouped"
_MIN_OPSET = 13  # Unsqueeze and Squeeze take axes as an input


def check_opset(model: ir.Model) -> None:
    """PreconditionError when the model's default opset is older than the subgraph needs."""
    opset = model.opset_imports.get("", 0)
    if opset < _MIN_OPSET:
        raise ir.passes.PreconditionError(
            f"the model's default opset is {opset}; the rewrite needs opset >= {_MIN_OPSET}. "
            "Re-export with a newer opset (optimum-cli export onnx --opset 14 ...)")


def check_shape(f: EmbeddingFactorization, match: EmbeddingMatch) -> None:
    """PreconditionError when the factorization was fitted on a table of another shape."""
    if match.shape != (f.n_rows, f.dim):
        raise ir.passes.PreconditionError(
            f"the factorization is {f.n_rows} x {f.dim} but the table {match.table.name!r} is "
            f"{match.shape[0]} x {match.shape[1]}; fit it on this model's table")


class FactorizeEmbeddingPass(ir.passes.InPlacePass):
    """Replace the word-embedding Gather with the k-branch subgraph of `factorization`, and, with
    `tied`, every tied LM head with the factorized head (head_forms.py): one tied rewrite.

    Attributes:
        factorization: the fitted EmbeddingFactorization (labels, U, V); its shape must
            match the table's. The pass never clusters anything itself.
        layout: "grouped" or "onehot" (see the module docstring).
        ids_input: name of the token-id graph input.
        lookup_form: how a quantized U is read, "contrib" or "standard" (see builder.py).
        tied: rewrite the heads with the same factors, U stored per cluster; a quantized U (U_q) is read
            by com.microsoft.MatMulNBits in the heads, decoded in the model's dtype, so fit it with
            compute_dtype set accordingly (fit_factorization(tied=True)).
        analysis: the model's WordTableAnalysis (analysis.py), when the caller has it; else the pass
            analyses the model itself.

    A model whose lookup is already factorized is left alone and reported as
    unmodified; without `tied`, a table with other consumers (a tied LM head) is refused.
    The result (RewriteResult) carries the bytes of the initializers written.
    """

    def __init__(self, factorization: EmbeddingFactorization, layout: str = DEFAULT_LAYOUT,
                 ids_input: str = "input_ids", lookup_form: str = "contrib", tied: bool = False,
                 analysis: WordTableAnalysis | None = None) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}")
        if lookup_form not in LOOKUP_FORMS:
            raise ValueError(f"lookup_form={lookup_form!r} must be one of {LOOKUP_FORMS}")
        self.factorization = factorization
        self.layout = layout
        self.ids_input = ids_input
        self.lookup_form = lookup_form
        self.tied = tied
        self.analysis = analysis
        self._rewritten = None  # (table, nodes) the last call replaced, for `ensures`

    rewrites_lookups = True  # FactorizeHeadPass: the heads alone

    def requires(self, model: ir.Model) -> None:
        check_opset(model)

    def ensures(self, model: ir.Model) -> None:
        if self._rewritten is None:
            return
        table, nodes = self._rewritten
        left = [n for n in nodes if n.graph is not None] or [n for n, _ in table.uses()]
        if left:
            raise ir.passes.PostconditionError(
                "after the rewrite no lookup or head should read the dense word table; still read by "
                + ", ".join(f"{n.op_type} {n.name!r}" for n in left))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._rewritten = None
        analysis = analysis_for(model, self.analysis, self.ids_input)
        if not analysis.matches and analysis.factorized and self.rewrites_lookups:
            logger.info("word embedding already factorized; nothing to do")
            return RewriteResult(model, modified=False)
        try:
            heads = analysis.tied_heads() if self.tied else analysis.check_untied() or ()
        except ValueError as err:
            raise ir.passes.PreconditionError(str(err)) from err
        check_shape(self.factorization, analysis.match)
        before = set(model.graph.initializers)
        np_dtype = analysis.dtype.numpy()
        for i, head in enumerate(heads):  # first: the lookups read the U_c and V_c the heads registered
            rewrite_head(model.graph, head, self.factorization, np_dtype, scope=f"head{i}" if i else "head")
        if self.rewrites_lookups:
            for i, occurrence in enumerate(analysis.matches):  # one per If branch in a merged decoder
                self._rewrite(model.graph, occurrence, scope=f"lookup{i}" if i else "")
            self._rewritten = analysis.table, [*(m.lookup for m in analysis.matches), *(h.node for h in heads)]
        return RewriteResult(model, modified=self.rewrites_lookups or bool(heads),
                             written=written_since(model.graph, before))

    def _rewrite(self, graph: ir.Graph, match: EmbeddingMatch, scope: str = "") -> None:
        f = self.factorization
        np_dtype = match.dtype.numpy()
        builder = Builder(graph, match.nodes[-1], scope=scope)
        ids = match.lookup.inputs[1]
        flat = builder.op("Reshape", [ids, builder.const("flat_shape", np.array([-1], np.int64))], "flat_ids")
        if self.tied:  # grouped: branch c reads the U_c and V_c the head reads
            y = _clustered_middle(builder, flat, f, np_dtype)
        elif f.U_q is None:
            u = builder.op("Gather", [builder.const("U", f.U.astype(np_dtype)), flat], "u")
        else:
            u = block_quantized_lookup(builder, f.U_q, flat, self.lookup_form, "U")
            u = builder.cast(u, np_dtype, "u", f.U_q.scales.dtype)
        if not self.tied:
            cid = _cluster_ids(builder, flat, f)
            if self.layout == "onehot":
                y = _onehot_middle(builder, u, cid, f, np_dtype)
            else:
                y = _grouped_middle(builder, u, cid, flat, f, np_dtype)
        out_shape = builder.op("Concat", [builder.op("Shape", [ids], "ids_shape"),
                                          builder.const("dim", np.array([f.dim], np.int64))], "out_shape", axis=0)
        replace_lookup(graph, match, builder.op("Reshape", [y, out_shape], "embeddings"))


def _cluster_ids(b: Builder, flat: ir.Value, f: EmbeddingFactorization) -> ir.Value:
    cid8 = b.op("GatherElements", [b.const("cluster_ids", f.labels), flat], "cluster_id")
    return b.op("Cast", [cid8], "cluster_id_int64", to=ir.DataType.INT64)


def _clustered_middle(b: Builder, flat: ir.Value, f: EmbeddingFactorization, np_dtype) -> ir.Value:
    """The grouped branches reading U as the factorized head stores it, per cluster: branch c gathers its
    tokens' rows of U_c (by their row within the cluster) and multiplies them by V_c. Empty clusters have no
    branch."""
    cid = _cluster_ids(b, flat, f)
    order = ClusterOrder(f.labels, f.n_clusters)
    index = np.int32 if f.n_rows < 2**31 else np.int64
    local = b.op("GatherElements", [b.const("row_in_cluster", order.row_in_cluster.astype(index)), flat],
                 "local_row")
    out = _zeros(b, flat, f, np_dtype)
    for c, u_c in enumerate(cluster_rows(b, f, order, np_dtype)):
        if u_c is None:
            continue
        hit = b.op("Equal", [cid, b.const(f"branch{c}/id", np.array(c, np.int64))], f"branch{c}/hit")
        rows = b.op("Transpose", [b.op("NonZero", [hit], f"branch{c}/nonzero")], f"branch{c}/rows")
        local_c = b.op("GatherND", [local, rows], f"branch{c}/local")
        if isinstance(u_c, ir.Value):
            u = b.op("Gather", [u_c, local_c], f"branch{c}/u")
        else:  # quantized, decoded in the model's dtype as MatMulNBits decodes it for the head
            u = standard_rows(b, u_c.q, u_c.codes, u_c.scales, u_c.zero_points, local_c, f"branch{c}/U",
                              compute_dtype=np_dtype)
        y_c = b.op("MatMul", [u, branch(b, f, c, np_dtype)], f"branch{c}/y")
        out = b.op("ScatterND", [out, rows, y_c], f"branch{c}/out")
    return out


def _zeros(b: Builder, flat: ir.Value, f: EmbeddingFactorization, np_dtype) -> ir.Value:
    zeros_shape = b.op("Concat", [b.op("Shape", [flat], "n_tokens"),
                                  b.const("dim_", np.array([f.dim], np.int64))], "zeros_shape", axis=0)
    return b.op("ConstantOfShape", [zeros_shape], "zeros", value=ir.tensor(np.zeros(1, dtype=np_dtype)))


def _onehot_middle(b: Builder, u: ir.Value, cid: ir.Value, f: EmbeddingFactorization, np_dtype) -> ir.Value:
    k, j, d = f.n_clusters, f.rank, f.dim
    mask = b.op("Equal", [b.op("Unsqueeze", [cid, b.const("axis1", np.array([1], np.int64))], "cid_col"),
                          b.const("branch_index", np.arange(k, dtype=np.int64))], "branch_mask")
    weights = b.op("Cast", [mask], "branch_weight", to=ir.DataType.from_numpy(np_dtype))
    block = b.op("Mul", [b.op("Unsqueeze", [weights, b.const("axis2", np.array([2], np.int64))], "weight_col"),
                         b.op("Unsqueeze", [u, b.const("axis1_u", np.array([1], np.int64))], "u_row")],
                 "branch_inputs")
    block = b.op("Reshape", [block, b.const("block_shape", np.array([-1, k * j], np.int64))], "block")
    return b.op("MatMul", [block, branch_weights(b, "V", f.V.reshape(k * j, d), np_dtype)], "recombined")


def _grouped_middle(b: Builder, u: ir.Value, cid: ir.Value, flat: ir.Value, f: EmbeddingFactorization,
                    np_dtype) -> ir.Value:
    out = _zeros(b, flat, f, np_dtype)
    for c in range(f.n_clusters):
        hit = b.op("Equal", [cid, b.const(f"branch{c}/id", np.array(c, np.int64))], f"branch{c}/hit")
        rows = b.op("Transpose", [b.op("NonZero", [hit], f"branch{c}/nonzero")], f"branch{c}/rows")
        u_c = b.op("GatherND", [u, rows], f"branch{c}/u")
        y_c = b.op("MatMul", [u_c, branch_weights(b, f"branch{c}/V", f.V[c], np_dtype)], f"branch{c}/y")
        out = b.op("ScatterND", [out, rows, y_c], f"branch{c}/out")
    return out
