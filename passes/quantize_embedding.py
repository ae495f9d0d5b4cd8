"""Store the word table quantized, as ONNX Runtime's own quantizers would: no factorization.

What the chooser produces when plain quantization beats the factors at the asked size::

    block-quantized:  ids -> GatherBlockQuantized(codes, ids, scales, zero points) [-> Cast] -> embeddings
                      (or the standard-opset form, builder.py)
    per-tensor int8:  ids -> Gather(uint8 table) -> DequantizeLinear(scale, zero point)       -> embeddings

Every lookup of the table is rewritten (both branches of a merged decoder's If); they share
the quantized initializers.
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
    """

    def __init__(self, quantized, ids_input: str = "input_ids", lookup_form: str = "contrib",
                 analysis: WordTableAnalysis | None = None) -> None:
        super().__init__()
        if lookup_form not in LOOKUP_FORMS:
            raise ValueError(f"lookup_form={lookup_form!r} must be one of {LOOKUP_FORMS}")
        self.quantized = quantized
        self.ids_input = ids_input
        self.lookup_form = lookup_form
        self.analysis = analysis

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        analysis = analysis_for(model, self.analysis, self.ids_input)
        try:
            match = analysis.match
            analysis.check_untied()
        except ValueError as err:
            raise ir.passes.PreconditionError(str(err)) from err
        if match.shape != self.quantized.shape:
            raise ir.passes.PreconditionError(
                f"the quantized table is {self.quantized.shape} but the model's is {match.shape}")
        before = set(model.graph.initializers)
        for i, occurrence in enumerate(analysis.matches):  # one per If branch in a merged decoder
            self._emit(Builder(model.graph, occurrence.nodes[-1], scope=f"lookup{i}" if i else ""), occurrence)
        return RewriteResult(model, modified=True, written=written_since(model.graph, before))

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
