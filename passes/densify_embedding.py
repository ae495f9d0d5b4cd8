"""Replace the word-embedding lookup, in whatever stored form, with a Gather of a given dense table.

The numeric check's reference: the model exactly as it was, but reading the dense
table a factorization or quantization stands for, so that any difference left is a
bug in the rewrite, never an approximation.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.builder import Builder, replace_lookup
from projclust_onnx.passes.word_embedding import search_word_embedding

__all__ = ["DensifyEmbeddingPass"]


class DensifyEmbeddingPass(ir.passes.InPlacePass):
    """Make the word-embedding lookup a plain Gather of `table` (n, d), in the embeddings' dtype."""

    def __init__(self, table: np.ndarray, ids_input: str = "input_ids") -> None:
        super().__init__()
        self.table = table
        self.ids_input = ids_input

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        try:
            match = search_word_embedding(model.graph, self.ids_input).single()
        except ValueError as err:
            raise ir.passes.PreconditionError(str(err)) from err
        table = self.table.astype(match.dtype.numpy())
        if match.storage == "float":
            match.table.const_value = ir.tensor(table, name=match.table.name)
            return ir.passes.PassResult(model, modified=True)
        b = Builder(model.graph, match.nodes[-1], prefix="reference")
        replace_lookup(model.graph, match, b.op("Gather", [b.const("table", table), match.lookup.inputs[1]], "rows"))
        return ir.passes.PassResult(model, modified=True)
