"""Graph rewrites as onnx-ir passes (installed as projclust_onnx.passes).

`analyse_word_table` describes a model's word table once (its lookups, storage and tied heads);
the passes take that analysis (or build it) and rewrite. One pass per rewrite; compose them
with onnx-ir's PassManager, e.g. through `factorize_embedding_pipeline`, which adds the common
clean-ups after ours. The forms of a tied head are rule classes in `HEAD_FORMS`.
"""

from projclust_onnx.passes.analysis import WordTableAnalysis, analyse_word_table
from projclust_onnx.passes.builder import LOOKUP_FORMS
from projclust_onnx.passes.densify_embedding import DensifyEmbeddingPass
from projclust_onnx.passes.factorize_embedding import DEFAULT_LAYOUT, LAYOUTS, FactorizeEmbeddingPass, check_opset
from projclust_onnx.passes.factorize_head import FactorizeHeadPass
from projclust_onnx.passes.head_forms import HEAD_FORMS, GemmHead, Head, HeadForm, TransposedCopyHead, TransposeHead
from projclust_onnx.passes.pipeline import factorize_embedding_pipeline, with_cleanup
from projclust_onnx.passes.quantize_embedding import QuantizeEmbeddingPass
from projclust_onnx.passes.result import RewriteResult
from projclust_onnx.passes.split_initializers import SplitInitializersPass, unsplittable_readers
from projclust_onnx.passes.word_embedding import (
    EmbeddingMatch,
    EmbeddingSearch,
    find_word_embedding,
    head_copies,
    search_word_embedding,
)

__all__ = [
    "DEFAULT_LAYOUT",
    "HEAD_FORMS",
    "LAYOUTS",
    "LOOKUP_FORMS",
    "DensifyEmbeddingPass",
    "QuantizeEmbeddingPass",
    "SplitInitializersPass",
    "unsplittable_readers",
    "with_cleanup",
    "EmbeddingMatch",
    "EmbeddingSearch",
    "FactorizeEmbeddingPass",
    "FactorizeHeadPass",
    "GemmHead",
    "Head",
    "HeadForm",
    "RewriteResult",
    "TransposeHead",
    "TransposedCopyHead",
    "WordTableAnalysis",
    "analyse_word_table",
    "head_copies",
    "check_opset",
    "factorize_embedding_pipeline",
    "find_word_embedding",
    "search_word_embedding",
]
