"""The factorized embedding: row t is U[t] @ V[c(t)].

This is what the graph pass and the PyTorch module consume. It is built from a
fitted ProjectiveClustering (any k, k=1 being the SVD baseline) and the matrix it
was fitted on, and it travels as one safetensors file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from projclust_onnx.budget import factorized_size, id_dtype
from projclust_onnx.clustering import ProjectiveClustering

__all__ = ["EmbeddingFactorization"]


@dataclass
class EmbeddingFactorization:
    """Cluster ids of shape (n,), coefficients U of shape (n, j), branches V of shape (k, j, d)."""

    labels: np.ndarray
    U: np.ndarray
    V: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels).astype(id_dtype(self.V.shape[0]))
        n, j = self.U.shape
        k, jv, _ = self.V.shape
        if self.labels.shape != (n,) or jv != j:
            raise ValueError(f"inconsistent shapes: labels {self.labels.shape}, U {self.U.shape}, V {self.V.shape}")
        if n and int(self.labels.max()) >= k:
            raise ValueError(f"labels reach {int(self.labels.max())} but only n_clusters={k} branches exist")

    @classmethod
    def from_estimator(cls, estimator: ProjectiveClustering, X, dtype=np.float32) -> EmbeddingFactorization:
        """Project X onto the fitted subspaces: U[t] = x_t @ B_c, V[c] = B_c^T."""
        X = np.asarray(X)
        labels = estimator.predict(X)
        U = estimator.transform(X).astype(dtype)
        V = np.ascontiguousarray(np.transpose(estimator.bases_, (0, 2, 1))).astype(dtype)
        return cls(labels=labels, U=U, V=V)

    @property
    def n_rows(self) -> int:
        return self.U.shape[0]

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    @property
    def n_clusters(self) -> int:
        return self.V.shape[0]

    @property
    def dim(self) -> int:
        return self.V.shape[2]

    @property
    def n_params(self) -> int:
        """Stored weights n*j + k*j*d, cluster ids aside."""
        return self.U.size + self.V.size

    @property
    def nbytes(self) -> int:
        """Bytes of U, V and, for k > 1, the ids."""
        ids = self.labels.nbytes if self.n_clusters > 1 else 0
        return self.U.nbytes + self.V.nbytes + ids

    def size_in_params(self) -> float:
        """Parameter-equivalents as counted by the budget (ids included)."""
        return factorized_size(self.n_rows, self.dim, self.n_clusters, self.rank, self.U.dtype.itemsize)

    def reconstruct(self) -> np.ndarray:
        """The dense (n, d) table this factorization stands for."""
        out = np.empty((self.n_rows, self.dim), dtype=self.U.dtype)
        for c in range(self.n_clusters):
            rows = self.labels == c
            out[rows] = self.U[rows] @ self.V[c]
        return out

    def relative_error(self, X) -> float:
        """||X - reconstruct()||_F^2 / ||X||_F^2, in float64."""
        X = np.asarray(X, dtype=np.float64)
        return float(((X - self.reconstruct().astype(np.float64)) ** 2).sum() / (X ** 2).sum())

    def save(self, path: str | Path) -> None:
        """Write labels, U and V to one safetensors file."""
        from safetensors.numpy import save_file

        meta = {"format": "projclust-onnx/embedding-factorization",
                "shape": json.dumps([self.n_rows, self.rank, self.n_clusters, self.dim])}
        save_file({"labels": np.ascontiguousarray(self.labels), "U": np.ascontiguousarray(self.U),
                   "V": np.ascontiguousarray(self.V)}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingFactorization:
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises several types for a bad file
            raise ValueError(f"{path} is not a readable factorization file: {err}") from err
        missing = {"labels", "U", "V"} - tensors.keys()
        if missing:
            raise ValueError(f"{path} lacks tensors {sorted(missing)}; was it written by EmbeddingFactorization.save?")
        return cls(labels=tensors["labels"], U=tensors["U"], V=tensors["V"])
