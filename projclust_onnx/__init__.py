"""projclust-onnx: compress transformer word embeddings by projective clustering, for ONNX Runtime.

The public names load lazily so that `optimum-cli` and `projclust-onnx --help`
start without importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ProjectiveClustering": "projclust_onnx.clustering",
    "ConvergenceWarning": "projclust_onnx.clustering",
    "EmbeddingFactorization": "projclust_onnx.factorization",
    "rank_for_budget": "projclust_onnx.budget",
    "factorized_size": "projclust_onnx.budget",
    "ProjClustConfig": "projclust_onnx.config",
    "ProjClustCompressor": "projclust_onnx.compressor",
    "CompressionReport": "projclust_onnx.compressor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'projclust_onnx' has no attribute {name!r}")
