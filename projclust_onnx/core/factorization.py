"""The factorized embedding: row t is U[t] @ V[c(t)].

This is what the graph pass and the PyTorch module consume. It is built from a
fitted ProjectiveClustering (any k, k=1 being the SVD baseline) and the matrix it
was fitted on, and it travels as one safetensors file. U may be stored quantized
(`U_q`, ONNX Runtime's block layout); then U holds the values the runtime decodes
and V, in float16, is refit to them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from projclust_onnx.core.budget import factorized_size, id_dtype
from projclust_onnx.core.clustering import ProjectiveClustering
from projclust_onnx.storage.quantization import BlockQuantized
from projclust_onnx.storage.registry import name_for_bits

__all__ = ["EmbeddingFactorization"]


@dataclass
class EmbeddingFactorization:
    """Cluster ids of shape (n,), coefficients U of shape (n, j), branches V of shape (k, j, d),
    and optionally U's quantized storage U_q (then U is U_q.dequantize())."""

    labels: np.ndarray
    U: np.ndarray
    V: np.ndarray
    U_q: BlockQuantized | None = None

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
        labels, U = estimator.predict_transform(np.asarray(X))
        U = U.astype(dtype, copy=False)
        V = np.ascontiguousarray(np.transpose(estimator.bases_, (0, 2, 1))).astype(dtype)
        return cls(labels=labels, U=U, V=V)

    def quantized(self, bits: int, block_size: int, X, sample_weight=None,
                  compute_dtype=None) -> EmbeddingFactorization:
        """U stored in `bits`-bit blocks; V refit to the decoded U, per cluster, by weighted least squares
        against X of shape (n, d), and stored in float16. The refit takes back much of the rounding error.
        `compute_dtype`: the type the runtime decodes U in (default the scales' float16; float32 where a
        tied head reads U through MatMulNBits)."""
        U_q = BlockQuantized.quantize(self.U, bits, block_size)
        step = 1 << 16  # decoded a piece at a time: the decoder's float temporaries stay small
        U = np.concatenate([U_q.rows(slice(start, start + step)).dequantize(compute_dtype)
                            for start in range(0, self.n_rows, step)]) if self.n_rows else U_q.dequantize(compute_dtype)
        X = np.asarray(X)
        w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        sw = np.sqrt(w / w.max())
        V = np.empty(self.V.shape, dtype=np.float64)
        for c in range(self.n_clusters):
            gram, rhs = np.zeros((self.rank, self.rank)), np.zeros((self.rank, self.dim))
            # float64 sums a block of rows at a time: no float64 copy of the whole table
            for rows in _blocks(np.flatnonzero(self.labels == c), self.dim):
                A = U[rows].astype(np.float64) * sw[rows, None]
                gram += A.T @ A
                rhs += A.T @ (X[rows].astype(np.float64) * sw[rows, None])
            ridge = 1e-8 * (np.trace(gram) / len(gram) + 1e-30)  # rows < j or an empty cluster: stay defined
            V[c] = np.linalg.solve(gram + ridge * np.eye(len(gram)), rhs)
        return EmbeddingFactorization(labels=self.labels, U=U, V=V.astype(np.float16), U_q=U_q)

    @property
    def quantize(self) -> str:
        """How U is stored: "none", "int8" or "int4"."""
        return name_for_bits(None if self.U_q is None else self.U_q.bits)

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
        """Bytes of U (as stored), V and, for k > 1, the ids."""
        return self.U_nbytes + self.V.nbytes + self.ids_nbytes

    @property
    def U_nbytes(self) -> int:
        return self.U.nbytes if self.U_q is None else self.U_q.nbytes

    @property
    def ids_nbytes(self) -> int:
        return self.labels.nbytes if self.n_clusters > 1 else 0

    def size_in_params(self) -> float:
        """Parameter-equivalents as counted by the budget (ids included)."""
        return factorized_size(self.n_rows, self.dim, self.n_clusters, self.rank, self.U.dtype.itemsize)

    def reconstruct(self) -> np.ndarray:
        """The dense (n, d) table this factorization stands for."""
        dtype = self.U.dtype if self.U_q is None else np.float32
        out = np.empty((self.n_rows, self.dim), dtype=dtype)
        for c in range(self.n_clusters):
            rows = self.labels == c
            out[rows] = self.U[rows].astype(dtype) @ self.V[c].astype(dtype)
        return out

    def row_errors(self, X) -> np.ndarray:
        """||x_t - U[t] V[c(t)]||^2 for every row of X of shape (n, d), in float64, a block of rows at a
        time (the dense table is never built)."""
        X = np.asarray(X)
        dtype = self.U.dtype if self.U_q is None else np.float32
        out = np.empty(self.n_rows)
        for c in range(self.n_clusters):
            V = self.V[c].astype(dtype)
            for rows in _blocks(np.flatnonzero(self.labels == c), self.dim):
                approx = (self.U[rows].astype(dtype) @ V).astype(np.float64)
                out[rows] = ((X[rows].astype(np.float64) - approx) ** 2).sum(1)
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
        tensors = {"labels": self.labels, "U": self.U, "V": self.V}
        if self.U_q is not None:
            meta["U_q"] = json.dumps({"bits": self.U_q.bits, "block_size": self.U_q.block_size})
            tensors.update(U_q_data=self.U_q.data, U_q_scales=self.U_q.scales, U_q_zero_points=self.U_q.zero_points)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingFactorization:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
        except Exception as err:  # safetensors raises several types for a bad file
            raise ValueError(f"{path} is not a readable factorization file: {err}") from err
        missing = {"labels", "U", "V"} - tensors.keys()
        if missing:
            raise ValueError(f"{path} lacks tensors {sorted(missing)}; was it written by EmbeddingFactorization.save?")
        U_q = None
        if "U_q" in meta:
            spec = json.loads(meta["U_q"])
            U_q = BlockQuantized(tensors["U_q_data"], tensors["U_q_scales"], tensors["U_q_zero_points"],
                                 spec["bits"], spec["block_size"])
        return cls(labels=tensors["labels"], U=tensors["U"], V=tensors["V"], U_q=U_q)


def _blocks(rows: np.ndarray, width: int, elements: int = 1 << 22):
    """`rows` cut into consecutive pieces of about `elements` values of `width` each."""
    step = max(1, elements // max(width, 1))
    for start in range(0, len(rows), step):
        yield rows[start:start + step]
