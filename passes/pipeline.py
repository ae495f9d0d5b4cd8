"""Each rewrite followed by onnx-ir's common clean-ups, as one PassManager."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass, RemoveUnusedNodesPass, TopologicalSortPass
from projclust_onnx.passes.factorize_embedding import DEFAULT_LAYOUT, FactorizeEmbeddingPass


def cleanup() -> ir.passes.PassManager:
    """Drop what a rewrite left unused, sort, then run onnx.checker with full shape inference."""
    return ir.passes.PassManager([RemoveUnusedNodesPass(), TopologicalSortPass(), CheckerPass(full_check=True)])


def with_cleanup(rewrite: ir.passes.PassBase) -> ir.passes.PassManager:
    """Rewrite, then the clean-ups (`cleanup`)."""
    return ir.passes.PassManager([rewrite, cleanup()])


def factorize_embedding_pipeline(factorization, layout: str = DEFAULT_LAYOUT, ids_input: str = "input_ids",
                                 lookup_form: str = "contrib") -> ir.passes.PassManager:
    return with_cleanup(FactorizeEmbeddingPass(factorization, layout=layout, ids_input=ids_input,
                                               lookup_form=lookup_form))
