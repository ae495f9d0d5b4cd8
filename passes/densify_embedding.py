"""Replace the word-embedding lookup, in whatever stored form, with a Gather of a given dense table.

The numeric check's reference: the model exactly as it was, but reading the dense
table a factorization or quantization stands for, so that any difference left is a
bug in the rewrite, never an approximation.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.analysis import WordTableAnalysis
from projclust_onnx.passes.builder import Builder, replace_lookup
from projclust_onnx.passes.head_forms import head_copies
from projclust_onnx.passes.result import analysis_for

__all__ = ["DensifyEmbeddingPass"]


class DensifyEmbeddingPass(ir.passes.InPlacePass):
    """Make the word-embedding lookup a plain Gather of `table` (n, d), in the embeddings' dtype, and a tied
    head's transposed copy `table`^T (unless heads=False). `analysis`: the model's WordTableAnalysis, or
    that of the file the model was loaded from (bound by position); None: the pass analyses the model."""

    def __init__(self, table: np.ndarray, ids_input: str = "input_ids", heads: bool = True,
                 analysis: WordTableAnalysis | None = None) -> None:
        super().__init__()
        self.table = table
        self.ids_input = ids_input
        self.heads = heads  # False: a head's own transposed copy stays as it was (kept dense, untied)
        self.analysis = analysis

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        analysis = analysis_for(model, self.analysis, self.ids_input)
        try:
            match = analysis.match
            heads = analysis.tied_heads() if match.stored_float and self.heads else ()
        except ValueError as err:
            raise ir.passes.PreconditionError(str(err)) from err
        table = self.table.astype(match.dtype.numpy())
        modified = False
        for copy in head_copies(heads):  # a tied head's own transposed copy holds the same dense table
            if not np.array_equal(copy.const_value.numpy(), table.T):
                copy.const_value = ir.tensor(np.ascontiguousarray(table.T), name=copy.name)
                modified = True
        if match.stored_float:
            if not np.array_equal(match.table.const_value.numpy(), table):
                match.table.const_value = ir.tensor(table, name=match.table.name)
                modified = True
            return ir.passes.PassResult(model, modified=modified)
        for i, occurrence in enumerate(analysis.matches):
            b = Builder(model.graph, occurrence.nodes[-1], prefix="reference", scope=f"lookup{i}" if i else "")
            replace_lookup(model.graph, occurrence,
                           b.op("Gather", [b.const("table", table), occurrence.lookup.inputs[1]], "rows"))
        return ir.passes.PassResult(model, modified=True)
