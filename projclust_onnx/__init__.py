"""projclust-onnx: compress transformer word embeddings by projective clustering, for ONNX Runtime.

Layers, each importing only from those below it: common < storage (one class per storage format,
one registry) < core (the estimator, factorizations, budget, chooser, calibration) < passes (graph
rewrites, installed as projclust_onnx.passes) < pipeline (config, plan, compressor, report, output
directory) < nn, benchmark < cli.

The public names load lazily so that `optimum-cli` and `projclust-onnx --help`
start without importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ProjectiveClustering": "projclust_onnx.storage.clustering",
    "ConvergenceWarning": "projclust_onnx.storage.clustering",
    "EmbeddingFactorization": "projclust_onnx.storage.factorization",
    "rank_for_budget": "projclust_onnx.core.budget",
    "factorized_size": "projclust_onnx.core.budget",
    "ProjClustConfig": "projclust_onnx.pipeline.config",
    "ProjClustCompressor": "projclust_onnx.pipeline.compressor",
    "CompressionReport": "projclust_onnx.pipeline.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'projclust_onnx' has no attribute {name!r}")
