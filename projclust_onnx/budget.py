"""Parameter-budget arithmetic shared by the core, the pass, the config and the CLI.

A factorized table stores U (n x j), the k branch matrices V (k x j x d) and, for
k > 1, one cluster id per row. The ids are counted in parameter-equivalents: an
id of `id_bytes` bytes costs id_bytes / param_bytes of a parameter (a uint8 id
beside float32 tables is a quarter of a parameter). With k = 1 no ids are stored.
"""

from __future__ import annotations

import numpy as np


def id_dtype(n_clusters: int) -> np.dtype:
    """The smallest unsigned integer type that holds cluster ids 0..k-1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n_clusters - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"n_clusters={n_clusters} is too large")


def factorized_size(n_rows: int, dim: int, n_clusters: int, rank: int, param_bytes: int = 4) -> float:
    """Parameter-equivalents of the factorized table: n*j + k*j*d + ids."""
    ids = 0.0 if n_clusters == 1 else n_rows * id_dtype(n_clusters).itemsize / param_bytes
    return n_rows * rank + n_clusters * rank * dim + ids


def rank_for_budget(n_rows: int, dim: int, n_clusters: int, compression: float, param_bytes: int = 4) -> int:
    """The largest rank j with n*j + k*j*d + ids <= (1 - compression) * n * d.

    Raises ValueError when even j = 1 does not fit the budget.
    """
    if not 0.0 < compression < 1.0:
        raise ValueError(f"compression={compression} must lie in (0, 1), e.g. 0.4 for a 40% smaller table")
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} must be >= 1")
    budget = (1.0 - compression) * n_rows * dim
    ids = factorized_size(n_rows, dim, n_clusters, 0, param_bytes)
    rank = int((budget - ids) // (n_rows + n_clusters * dim))
    rank = min(rank, dim - 1)
    if rank < 1:
        raise ValueError(
            f"compression={compression} with n_clusters={n_clusters} leaves no room for rank >= 1 "
            f"on a {n_rows} x {dim} table; lower compression or n_clusters")
    return rank
