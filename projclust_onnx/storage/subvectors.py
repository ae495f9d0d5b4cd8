"""How a row of d values is cut into m sub-vectors: the layout codebooks store (storage/codebook.py) and their
rotation is refined on (storage/rotation.py). Numpy only, below both."""

from __future__ import annotations

import numpy as np

ROWS = 1 << 14  # rows per block where a fit reads the whole table (second moment, rotation, sub-vectors)


def layout(d: int, m: int) -> tuple[int, np.ndarray | None]:
    """(s, columns) of d values in m sub-vectors: the first d % m hold s = ceil(d/m) values, the rest s - 1."""
    if not 1 <= m <= d:
        raise ValueError(f"{m} sub-vectors must lie in 1..{d} for rows of {d} values")
    s = -(-d // m)
    if d % m == 0:
        return s, None
    columns = np.concatenate([i * s + np.arange(length) for i, length in enumerate(lengths(d, m))])
    return s, columns.astype(np.int32)


def subvectors(X: np.ndarray, m: int, to_coordinates: np.ndarray | None = None) -> np.ndarray:
    """The rows of X (n, d), or their coordinates X @ to_coordinates (d, r), as m sub-vectors of s values,
    (m, n, s) float32, padded as layout() places them. Contiguous (each sub-vector's rows are read without
    strides) and filled a block of rows at a time: the one table-sized array a codebook fit adds."""
    n = len(X)
    s, columns = layout(X.shape[1] if to_coordinates is None else to_coordinates.shape[1], m)
    parts = np.empty((m, n, s), np.float32)
    padded = np.zeros((min(n, ROWS), m * s), np.float32)
    where = columns if columns is not None else slice(None)
    for start in range(0, n, ROWS):
        rows = X[start:start + ROWS]
        block = padded[:len(rows)]
        block[:, where] = rows if to_coordinates is None else rows @ to_coordinates
        parts[:, start:start + len(rows)] = block.reshape(len(rows), m, s).transpose(1, 0, 2)
    return parts


def lengths(d: int, m: int) -> np.ndarray:
    """The number of values in each of the m sub-vectors of d values, the longer ones first."""
    lengths = np.full(m, d // m)
    lengths[: d % m] += 1
    return lengths
