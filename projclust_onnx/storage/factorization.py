"""The factorized embedding: row t is U[t] @ V[c(t)], and Factors, its entry in the registry of encodings.

EmbeddingFactorization is what the graph passes and the PyTorch module consume. It is built from a
fitted ProjectiveClustering (any k, k=1 being the SVD baseline) and the matrix it
was fitted on, and it travels as one safetensors file. U may be stored quantized
(`U_q`, ONNX Runtime's block layout); then U holds the values the runtime decodes
and V, in float16, is refit to them.

Factors is the registered encoding: its bytes, its fit (clustering, then U's storage), its decode and what
the report says of it. Its rows come from k branches (`branches`), which the factor passes write, tied
heads included, rather than one lookup emitted through the Builder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from projclust_onnx.storage.base import StorageFormat
from projclust_onnx.storage.blocks import BLOCK_FORMATS
from projclust_onnx.storage.float import FloatStorage
from projclust_onnx.storage.quantization import BlockQuantized

if TYPE_CHECKING:
    from projclust_onnx.storage.clustering import ProjectiveClustering

__all__ = ["EmbeddingFactorization", "Factors", "id_dtype"]


def id_dtype(n_clusters: int) -> np.dtype:
    """The smallest unsigned integer type that holds cluster ids 0..k-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_clusters - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"n_clusters={n_clusters} is too large")


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
    def u_storage(self) -> StorageFormat:
        """How U is stored: the table's float type, or blocks of U_q's bits."""
        return FloatStorage() if self.U_q is None else BLOCK_FORMATS[self.U_q.bits](self.U_q.block_size)

    @property
    def quantize(self) -> str:
        """The name of U's storage (a --quantize value)."""
        return self.u_storage.name

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
        """Parameter-equivalents of the float factorized table, as counted by the budget (ids included)."""
        itemsize = self.U.dtype.itemsize
        return Factors(self.n_clusters, self.rank).nbytes(self.n_rows, self.dim, itemsize) / itemsize

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


class Factors(StorageFormat):
    """k subspaces of rank j: U (n x j) in `u`, V (k x j x d) in the table's float type (float16 beside
    quantized U), and for k > 1 one cluster id per row. `estimator`: ProjectiveClustering's settings for
    encode; `dtype` the float type U and V are computed in, `compute_dtype` the one a tied head decodes U
    in (MatMulNBits), None for the scales' own."""

    name = "projclust"
    methods = ("projclust", "svd")  # k subspaces; one subspace (k = 1), the baseline
    branches = True
    help = "projclust: k subspaces; svd: one subspace, the baseline"

    def __init__(self, n_clusters: int = 1, rank: int | None = None, u: StorageFormat | None = None, *,
                 estimator: dict | None = None, dtype=np.float32, compute_dtype=None) -> None:
        super().__init__(None)
        self.n_clusters, self.rank, self.u = int(n_clusters), rank, u or FloatStorage()
        self.estimator, self.dtype, self.compute_dtype = dict(estimator or {}), dtype, compute_dtype

    def __repr__(self) -> str:
        return f"Factors(n_clusters={self.n_clusters}, rank={self.rank}, u={self.u!r})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and (self.n_clusters, self.rank, self.u) == \
            (other.n_clusters, other.rank, other.u)

    def __hash__(self) -> int:
        return hash((type(self), self.n_clusters, self.rank, self.u))

    @property
    def label(self) -> str:
        return f"{self.method} k={self.n_clusters} j={self.rank}, U {self.u.label}"

    @classmethod
    def fixed_clusters(cls, method: str) -> tuple[int | None, str]:
        if method == cls.methods[1]:
            return 1, f"the one-cluster case; use {{method}} {cls.methods[0]} for k > 1"
        return None, ""

    @property
    def method(self) -> str:
        """What the report calls the fit: projclust, or svd for one cluster."""
        return self.methods[1] if self.n_clusters == 1 else self.methods[0]

    def nbytes(self, n: int, m: int, itemsize: int = 4) -> int:
        """Bytes of U, V and the cluster ids as stored (V in the table's float type beside float U, float16
        beside quantized U)."""
        j = self.rank or 0
        ids = 0 if self.n_clusters == 1 else n * id_dtype(self.n_clusters).itemsize
        v_itemsize = itemsize if self.u.bits is None else 2
        return self.u.nbytes(n, j, itemsize) + self.n_clusters * j * m * v_itemsize + ids

    def encode(self, matrix: np.ndarray, sample_weight=None) -> EmbeddingFactorization:
        """Cluster the rows (ProjectiveClustering with `estimator`'s settings) and factorize them; U then
        stored in `u`, V refit to it."""
        # torch comes with the fit, not with the registry: the CLI's --help imports this module
        from projclust_onnx.storage.clustering import ProjectiveClustering

        table32 = np.asarray(matrix, dtype=np.float32)
        estimator = ProjectiveClustering(self.n_clusters, self.rank, **self.estimator)
        factorization = EmbeddingFactorization.from_estimator(estimator.fit(table32, sample_weight=sample_weight),
                                                              table32, dtype=self.dtype)
        if self.u.bits is not None:
            factorization = factorization.quantized(self.u.bits, self.u.block_size, table32, sample_weight,
                                                    compute_dtype=self.compute_dtype)
        return factorization

    @staticmethod
    def decode(stored: EmbeddingFactorization) -> np.ndarray:
        """The dense table, in U's type for float U (float32 for quantized U)."""
        return stored.reconstruct()

    @classmethod
    def holds(cls, stored) -> bool:
        return isinstance(stored, EmbeddingFactorization)

    @classmethod
    def of(cls, stored: EmbeddingFactorization) -> Factors:
        return cls(stored.n_clusters, stored.rank, stored.u_storage)

    def emit_lookup(self, b, stored, ids, form: str, name: str):
        raise NotImplementedError("factors are written as k branches by the factor passes (branches = True)")

    def report_fields(self, stored: EmbeddingFactorization, n: int, d: int) -> dict:
        quantized = stored.U_q is not None
        return {"method": self.method, "n_clusters": stored.n_clusters, "rank": stored.rank,
                "cluster_id_bytes": stored.ids_nbytes, "embedding_params_after": stored.n_params,
                "quantize": stored.quantize, "block_size": stored.U_q.block_size if quantized else None,
                "storage": stored.u_storage.label if quantized else None}

    def lookup_form(self, form: str, tied: bool) -> str | None:
        return None if self.u.bits is None else super().lookup_form(form, tied)

    @classmethod
    def summary_method(cls, report) -> str:
        return (f"{report.method}, k={report.n_clusters}, j={report.rank}, layout={report.layout}, "
                f"U {report.storage_after}")

    @classmethod
    def candidate_label(cls, candidate, storage_label: str) -> str:
        return f"{candidate.method} k={candidate.n_clusters} j={candidate.rank}, U {storage_label}"

    def whole_parts(self, n: int, d: int, itemsize: int, tied: bool, lookup_form: str) -> list[tuple[str, int, bool]]:
        """(what, bytes, whether the rank sizes it) of the initializers the factor passes write whole (1-D, or
        read by operators that need them whole) for these k, j and U storage; a tied head's per-cluster U is at
        least n/k rows. `itemsize`: the lookup's float type's."""
        k, j, bits = self.n_clusters, self.rank, self.u.bits
        parts = [("cluster ids", n * id_dtype(k).itemsize, False)]
        if bits is not None or tied:  # V read by a Cast (float16 V), or by a head's Gemm and the lookup's MatMul
            parts.append(("V of one cluster", j * d * (2 if bits is not None else itemsize), True))
        if tied:
            parts.append(("index maps", 4 * n, False))
            if bits is not None:
                parts.append(("U of the largest cluster", -(-n // k) * j * bits // 8, True))
        elif bits is not None and lookup_form == "contrib":
            parts.append(("U codes (read by GatherBlockQuantized)", n * j * bits // 8, True))
        return parts
