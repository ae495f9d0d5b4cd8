"""Weighted k-means of many small sub-vector spaces at once, in PyTorch (CUDA when present).

Product quantization (storage/codebook.py) fits one codebook per sub-vector: m independent
k-means problems on the same rows. They run as one batch, (m, rows, s) against (m, K, s),
a block of rows at a time, so the distances take one (m, block, K) buffer whatever n is
(beside the rows themselves, their codes and one weighted copy in the update). Rows carry
weights (how often the calibration text lands on each token, special tokens heavily): the
centroids go where the inputs are. On large tables the first iterations run on a uniform
sample of rows (weights kept) and the last on every row, so a 250,000-row table costs a
few passes over all of it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from projclust_onnx.common.device import resolve_device

_BLOCK_ELEMENTS = 1 << 19  # m * rows * K floats per distance block (2 MiB: one core's L2 holds it)
_SAMPLE_ROWS = 1 << 16  # rows the early iterations use on a larger table
_FULL_ITERATIONS = 3  # iterations over every row at the end
KMEANS_ITERATIONS = 25  # Lloyd steps at most, the last _FULL_ITERATIONS of them on every row of a large table


def subvector_kmeans(X: torch.Tensor, n_centroids: int, weights: torch.Tensor | None = None, *,
                     max_iter: int = KMEANS_ITERATIONS, tol: float = 1e-4, seed: int = 0, device="auto", exact=(),
                     progress=None, codes: bool = True, init=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Centroids (m, K, s) float32 and codes (n, m) (uint8 up to 256 centroids) of X (m, n, s): per sub-vector,
    the weighted k-means of the n rows' s values (sum_i w_i ||x_i - c(x_i)||^2, Lloyd from weighted samples).
    Rows `exact` (fewer than K) are centroids of their own in every sub-vector, held fixed: kept exactly.
    `progress(1)` is called after each Lloyd step (the sample's and the full rows' alike). codes=False: None
    for the codes (a caller that rounds the centroids first assigns its own, one pass over the rows fewer).
    `init` (m, K, s): centroids to start from (a warm start: no seeding; on a large table only the last
    iterations, those on every row), the exact rows' put back."""
    dev = resolve_device(device)
    X = torch.as_tensor(X, dtype=torch.float32).to(dev)
    m, n, s = X.shape
    w = torch.ones(n, device=dev) if weights is None else torch.as_tensor(weights, dtype=torch.float32).to(dev)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    K = min(n_centroids, n)
    exact = torch.as_tensor(np.asarray(exact, dtype=np.int64)).to(dev)
    if len(exact) >= K:
        raise ValueError(f"{len(exact)} exact rows leave no free centroid of {K}")
    if init is not None:
        C = torch.as_tensor(init, dtype=torch.float32).to(dev).clone()
        C[:, :len(exact)] = X[:, exact]
    else:  # seeds: K distinct rows per sub-vector, drawn in proportion to sqrt(weight) (frequent rows are
        # likely, rare ones and rows of weight 0 possible), then Lloyd
        p = w.sqrt().cpu().double()
        p = (p / p.sum() if p.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)) + 1e-9 / n
        p[exact.cpu()] = 0.0  # their centroids are fixed below
        picks = torch.stack([torch.multinomial(p, K - len(exact), replacement=False, generator=gen)
                             for _ in range(m)]).to(dev)
        picks = torch.cat([exact.expand(m, len(exact)), picks], 1)
        C = torch.gather(X, 1, picks.unsqueeze(-1).expand(m, K, s)).clone()
    lloyd = functools.partial(_lloyd, tol=tol, fixed=len(exact), progress=progress or (lambda n=1: None))
    if n > 2 * _SAMPLE_ROWS:  # most iterations on a sample (a warm start's were its caller's), the last on all
        if init is None:
            sample = torch.randperm(n, generator=gen)[:_SAMPLE_ROWS].to(dev)
            C = lloyd(X[:, sample], w[sample], C, max_iter - _FULL_ITERATIONS)
        C = lloyd(X, w, C, _FULL_ITERATIONS)
    else:
        C = lloyd(X, w, C, max_iter)
    return C.cpu().numpy(), nearest_codes(X, C) if codes else None


def nearest_codes(X, C) -> np.ndarray:
    """Codes (n, m) (uint8 up to 256 centroids) of X (m, n, s) against centroids C (m, K, s): each sub-vector's
    nearest centroid (the codes a stored, float16-rounded, codebook gets)."""
    X, C = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(C, dtype=torch.float32).to(X.device)
    codes, _ = _assign(X, C)
    return codes.T.cpu().numpy()


def _lloyd(X: torch.Tensor, w: torch.Tensor, C: torch.Tensor, iterations: int, tol: float,
           fixed: int = 0, progress=lambda n=1: None) -> torch.Tensor:
    """Up to `iterations` Lloyd steps from centroids C, the first `fixed` of each sub-vector held; stops when
    the weighted cost falls by less than tol."""
    return lloyd_with_codes(X, w, C, iterations, tol, fixed, progress)[0]


def lloyd_with_codes(X: torch.Tensor, w: torch.Tensor, C: torch.Tensor, iterations: int, tol: float,
                     fixed: int = 0, progress=lambda n=1: None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """_lloyd's centroids and the last codes (m, n) it assigned (None after no step): the returned centroids
    are those codes' weighted means (or the centroids they were assigned to, when it stopped), so the pair
    decodes the rows without another pass over them."""
    previous, codes = None, None
    for _ in range(iterations):
        codes, cost = _assign(X, C)
        total = float((cost * w).sum())
        if previous is not None and previous - total <= tol * previous:
            break
        C = torch.cat([C[:, :fixed], _update(X, w, codes, C)[:, fixed:]], 1)
        previous = total
        progress(1)
    return C, codes


def _assign(X: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row in each sub-vector, (m, n), and each row's squared distance summed over
    sub-vectors, (n,); a block of rows at a time."""
    m, n, s = X.shape
    K = C.shape[1]
    c2 = (C * C).sum(-1).unsqueeze(1)  # (m, 1, K)
    Ct = C.transpose(1, 2).contiguous()  # (m, s, K)
    block = max(1, _BLOCK_ELEMENTS // (m * K))
    # uint8 codes where they fit (every codebook: at most 256 centroids): an int64 (m, n) array weighed more
    # than the table itself
    codes = torch.empty((m, n), dtype=torch.uint8 if K <= 256 else torch.int32, device=X.device)
    cost = torch.empty(n, device=X.device)
    for start in range(0, n, block):
        x = X[:, start:start + block]
        dist = torch.baddbmm(c2, x, Ct, alpha=-2.0)  # ||c||^2 - 2 x.c
        best, idx = _min(dist)
        codes[:, start:start + block] = idx
        cost[start:start + block] = (best + (x * x).sum(-1)).clamp_min(0).sum(0)
    return codes, cost


def _min(dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dist.min(-1): values and indices. On the CPU the indices come from NumPy's argmin, which is
    vectorised where torch's min-with-indices is not (3x faster over 256 centroids; the k-means' main cost)."""
    if dist.device.type != "cpu":
        return dist.min(-1)
    idx = torch.from_numpy(dist.numpy().argmin(-1))
    return dist.gather(-1, idx.unsqueeze(-1)).squeeze(-1), idx


def _update(X: torch.Tensor, w: torch.Tensor, codes: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Weighted means of each centroid's rows; a centroid no row chose keeps its place."""
    m, n, s = X.shape
    K = C.shape[1]
    offsets = torch.arange(m, device=X.device).unsqueeze(1) * K
    sums = torch.zeros((m * K, s), device=X.device)
    mass = torch.zeros(m * K, device=X.device)
    block = max(1, _BLOCK_ELEMENTS // (m * s))
    for start in range(0, n, block):  # the weighted rows a block at a time, not a table-sized copy
        flat = (codes[:, start:start + block].long() + offsets).reshape(-1)  # (m * rows,)
        wb = w[start:start + block]
        sums.index_add_(0, flat, (X[:, start:start + block] * wb.view(1, -1, 1)).reshape(-1, s))
        mass.index_add_(0, flat, wb.expand(m, -1).reshape(-1))
    new = sums / mass.clamp_min(1e-30).unsqueeze(1)
    keep = (mass <= 0).unsqueeze(1)
    return torch.where(keep, C.reshape(-1, s), new).reshape(m, K, s)
