"""Our rewrite followed by onnx-ir's common clean-ups, as one PassManager."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass, RemoveUnusedNodesPass, TopologicalSortPass
from projclust_onnx.passes.factorize_embedding import DEFAULT_LAYOUT, FactorizeEmbeddingPass


def factorize_embedding_pipeline(factorization, layout: str = DEFAULT_LAYOUT,
                                 ids_input: str = "input_ids") -> ir.passes.PassManager:
    """Rewrite, drop the dead table, sort, then run onnx.checker with full shape inference."""
    return ir.passes.PassManager([
        FactorizeEmbeddingPass(factorization, layout=layout, ids_input=ids_input),
        RemoveUnusedNodesPass(),
        TopologicalSortPass(),
        CheckerPass(full_check=True),
    ])
