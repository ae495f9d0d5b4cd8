"""Rewrite the tied LM heads alone with the word embedding's factors.

The tied rewrite is one pass, FactorizeEmbeddingPass(tied=True), which rewrites the heads (each
by its form's rule, head_forms.py) and then the lookups. FactorizeHeadPass is its head half, kept
for callers that run the two halves in sequence (FactorizeHeadPass, then
FactorizeEmbeddingPass(tied=True), which then finds no head left and rewrites the lookups).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from projclust_onnx.passes.analysis import WordTableAnalysis
from projclust_onnx.passes.factorize_embedding import FactorizeEmbeddingPass
from projclust_onnx.passes.factors import ClusterOrder, QuantizedRows, branch, cluster_rows

if TYPE_CHECKING:
    from projclust_onnx.storage.factorization import EmbeddingFactorization

__all__ = ["FactorizeHeadPass", "ClusterOrder", "QuantizedRows", "branch", "cluster_rows"]


class FactorizeHeadPass(FactorizeEmbeddingPass):
    """Replace every LM-head product with the word table (head_forms.HEAD_FORMS) by the factorized head,
    leaving the lookups; `modified` when a head was rewritten."""

    rewrites_lookups = False

    def __init__(self, factorization: EmbeddingFactorization, ids_input: str = "input_ids",
                 analysis: WordTableAnalysis | None = None) -> None:
        super().__init__(factorization, ids_input=ids_input, tied=True, analysis=analysis)
