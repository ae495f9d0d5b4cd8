"""projclust-onnx: compress transformer word embeddings by projective clustering, for ONNX Runtime.

The public names load lazily so that `optimum-cli` and `projclust-onnx --help`
start without importing torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"

# In a source checkout passes/ sits beside this folder and installs as projclust_onnx.passes;
# when the package is imported from the checkout itself (`python -m projclust_onnx.cli` in the
# repository root), let projclust_onnx.passes resolve to that folder too. Installed, it is a no-op.
_HERE = Path(__file__).resolve().parent
if not (_HERE / "passes").is_dir() and (_HERE.parent / "passes" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))

_EXPORTS = {
    "ProjectiveClustering": "projclust_onnx.clustering",
    "ConvergenceWarning": "projclust_onnx.clustering",
    "EmbeddingFactorization": "projclust_onnx.factorization",
    "rank_for_budget": "projclust_onnx.budget",
    "factorized_size": "projclust_onnx.budget",
    "ProjClustConfig": "projclust_onnx.config",
    "ProjClustCompressor": "projclust_onnx.compressor",
    "CompressionReport": "projclust_onnx.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'projclust_onnx' has no attribute {name!r}")
