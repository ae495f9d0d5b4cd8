"""Store the word table quantized, as ONNX Runtime's own quantizers would: no factorization.

What the chooser produces when plain quantization beats the factors at the asked size::

    block-quantized:  ids -> GatherBlockQuantized(codes, ids, scales, zero points) [-> Cast] -> embeddings
                      (or the standard-opset form, builder.py)
    per-tensor int8:  ids -> Gather(uint8 table) -> DequantizeLinear(scale, zero point)       -> embeddings

Every lookup of the table is rewritten (both branches of a merged decoder's If); they share
the quantized initializers. With `tied`, a tied LM head reads the same initializers: the
whole table decoded from constants alone (Range(0, n) as the ids), once in the main graph
(every If branch's head reads it), which ONNX Runtime folds at session start into a dense
table: the head is the original's product on that table, and the file holds one stored copy.
Session memory holds the decoded table (n d floats), about what the original held, and peaks
at several times that while folding; the head runs at the original's speed (0.98-1.05x in three
runs of benchmarks/bench_head_forms.py, where a head of per-sub-vector look-up tables ran
8-70x slower)::

    Range(0, n) -> (the storage's lookup of those rows) -> table' (n, d) -> the head's own form
                   (MatMul with one Transpose(table') for every such head, or Gemm(hidden, table', transB=1))
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.analysis import WordTableAnalysis
from projclust_onnx.passes.builder import LOOKUP_FORMS, Builder, replace_lookup
from projclust_onnx.passes.result import RewriteResult, analysis_for, written_since
from projclust_onnx.passes.word_embedding import EmbeddingMatch

from projclust_onnx.storage.registry import format_of

logger = logging.getLogger(__name__)

__all__ = ["QuantizeEmbeddingPass"]


class QuantizeEmbeddingPass(ir.passes.InPlacePass):
    """Replace every word-embedding lookup with a lookup of `quantized`, a table in any registered storage
    format (storage.registry), emitted as its format emits a lookup.

    Attributes:
        quantized: the table, already quantized (the pass quantizes nothing itself).
        ids_input: name of the token-id graph input.
        lookup_form: "contrib" or "standard", for block quantization.
        analysis: the model's WordTableAnalysis (analysis.py); None: the pass analyses the model.
        tied: rewrite the tied LM heads too, each reading the decoded table (module docstring).
    """

    def __init__(self, quantized, ids_input: str = "input_ids", lookup_form: str = "contrib",
                 analysis: WordTableAnalysis | None = None, tied: bool = False) -> None:
        super().__init__()
        if lookup_form not in LOOKUP_FORMS:
            raise ValueError(f"lookup_form={lookup_form!r} must be one of {LOOKUP_FORMS}")
        self.quantized = quantized
        self.ids_input = ids_input
        self.lookup_form = lookup_form
        self.analysis = analysis
        self.tied = tied

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        analysis = analysis_for(model, self.analysis, self.ids_input)
        try:
            match = analysis.match
            if self.tied:
                heads = analysis.tied_heads()
            else:
                heads = ()
                analysis.check_untied()
        except ValueError as err:
            raise ir.passes.PreconditionError(str(err)) from err
        if match.shape != self.quantized.shape:
            raise ir.passes.PreconditionError(
                f"the quantized table is {self.quantized.shape} but the model's is {match.shape}")
        if not heads and self._already_stored(match):
            logger.info("the word table is already stored as %s with these values; nothing to do", match.storage)
            return RewriteResult(model, modified=False, written={"table": match.stored_bytes})  # as it stays
        before = set(model.graph.initializers)
        for i, occurrence in enumerate(analysis.matches):  # one per If branch in a merged decoder
            self._emit(Builder(model.graph, occurrence.nodes[-1], scope=f"lookup{i}" if i else ""), occurrence)
        readers = {id(r): (r, h) for h in heads for r in [h.removed[0] if h.removed else h.node]}
        # decoded once, at the main graph's start (it reads constants only): a merged decoder's two If branches
        # both read it, so ONNX Runtime folds one table, not one per branch
        b = Builder(model.graph, next(iter(model.graph)), scope="head")
        table = decoded_table(b, self.quantized, match.dtype.numpy()) if readers else None
        transposed = None  # table'^T, built once where a head multiplies by the transpose
        for reader, head in readers.values():
            if head.rule.reads_copy or head.removed:
                transposed = transposed or b.op("Transpose", [table], "table_transposed", perm=[1, 0])
            if head.rule.reads_copy:  # MatMul(hidden, copy of table^T) reads table'^T
                reader.replace_input_with(1, transposed)
            elif head.removed:  # MatMul(hidden, Transpose(table)): its Transpose goes, table'^T read instead
                ir.convenience.replace_all_uses_with(reader.outputs[0], transposed)
                reader.graph.remove(reader, safe=True)
            else:  # Gemm(hidden, table, transB=1) reads table'
                reader.replace_input_with(next(j for j, v in enumerate(reader.inputs) if v is match.table), table)
            logger.info("the LM head %s reads the decoded table", head.describe())
        return RewriteResult(model, modified=True, written=written_since(model.graph, before))

    def _already_stored(self, match: EmbeddingMatch) -> bool:
        """Whether the lookup already reads this very table in this storage (this pass's own output)."""
        storage = format_of(self.quantized)
        if match.storage != storage.label:
            return False
        try:
            stored = type(storage).read(list(match.nodes))
        except NotImplementedError:
            return False
        return np.array_equal(storage.decode(stored), storage.decode(self.quantized))

    def _emit(self, b: Builder, match: EmbeddingMatch) -> None:
        """Replace one lookup of the table with a lookup of the quantized table."""
        np_dtype = match.dtype.numpy()
        ids = match.lookup.inputs[1]
        storage = format_of(self.quantized)
        decoded = storage.decoded_dtype(self.quantized)
        if storage.flat_ids:  # flatten the ids, reshape the rows back
            flat = b.op("Reshape", [ids, b.const("flat_shape", np.array([-1], np.int64))], "flat_ids")
            rows = storage.emit_lookup(b, self.quantized, flat, self.lookup_form, "table")
            rows = b.cast(rows, np_dtype, "table/rows_cast", decoded)
            out_shape = b.op("Concat", [b.op("Shape", [ids], "ids_shape"),
                                        b.const("dim", np.array([self.quantized.shape[1]], np.int64))],
                             "out_shape", axis=0)
            out = b.op("Reshape", [rows, out_shape], "embeddings")
        else:
            rows = storage.emit_lookup(b, self.quantized, ids, self.lookup_form, "table")
            out = b.cast(rows, np_dtype, "embeddings", decoded)
        replace_lookup(b.graph, match, out)


def decoded_table(b: Builder, quantized, np_dtype) -> ir.Value:
    """Every row of the stored table `quantized`, (n, d) in `np_dtype`, from constants only: Range(0, n) read
    through the storage's own lookup (what ONNX Runtime folds at session start)."""
    storage = format_of(quantized)
    n = quantized.shape[0]
    ids = b.op("Range", [b.const("head/zero", np.array(0, np.int64)), b.const("head/rows", np.array(n, np.int64)),
                         b.const("head/one", np.array(1, np.int64))], "all_ids")
    rows = storage.emit_lookup(b, quantized, ids, "standard", "table")
    return b.cast(rows, np_dtype, "table/decoded", storage.decoded_dtype(quantized))
