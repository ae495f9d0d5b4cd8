"""OPQ's rotation refinement (Ge et al. 2013, the non-parametric form): alternate short k-means
of the sub-vectors with the orthogonal Procrustes rotation that best maps the decoded rows
back onto the rows.

The codebook storage starts from the weighted principal directions with OPQ's eigenvalue
allocation; that basis balances the variance over the sub-vectors but ignores how each
sub-vector's values cluster. A few rounds on a sample of rows turn the basis towards
where the codebooks lose least (figures: benchmarks/RESULTS.md).
The rounds' Lloyd steps count towards the k-means' total (the final k-means starts from
the last round's centroids), so the fit costs little more; a table larger than the
k-means' own sample (65,536 rows) is refined on that sample.
"""

from __future__ import annotations

import numpy as np
import torch

from projclust_onnx.common.device import resolve_device
from projclust_onnx.storage.kmeans import lloyd_with_codes, subvector_kmeans
from projclust_onnx.storage.subvectors import layout, subvectors

SAMPLE_ROWS = 1 << 16  # rows the refinement sees, as the k-means' sample (a small sample lets the centroids fit
# it, the rotation follow them, and the full table's error rise)
LLOYD_STEPS = 2  # k-means steps per round, warm-started from the round before (more cost time, not error)


def refine_rotation(X: np.ndarray, w: np.ndarray | None, basis: np.ndarray, m: int, n_centroids: int,
                    rounds: int, *, exact=(), seed: int = 0, device="auto", progress=None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The orthonormal (r, d) basis (rows in sub-vector order) after `rounds` OPQ rounds from `basis`, the
    last round's centroids (m, K, s), a warm start for the k-means on the final basis, and the codes (rows, m)
    of the sampled rows that the last basis was fitted to; on a
    uniform sample of X's rows (weights w kept; the `exact` rows always in it, their centroids held on them).
    Each round: LLOYD_STEPS of weighted k-means of the m sub-vectors of the rows' coordinates, then the basis
    that minimises sum_i w_i ||x_i - decoded_i @ basis||^2 (Procrustes: U V^T of the SVD of sum_i w_i
    decoded_i^T x_i). `progress(1)` after each round."""

    if rounds < 1:
        raise ValueError(f"rounds={rounds}: refining a rotation takes at least one round")
    X = np.asarray(X, np.float32)
    n = len(X)
    exact = np.asarray(exact, np.int64)
    rows = np.arange(n)
    if n > SAMPLE_ROWS:
        rng = np.random.default_rng(seed)
        rest = np.setdiff1d(rows, exact)
        rows = np.sort(np.concatenate([exact, rng.choice(rest, SAMPLE_ROWS - len(exact), replace=False)]))
    Xs = X[rows]
    ws = np.ones(len(rows)) if w is None else np.asarray(w, np.float64)[rows]
    ws = ws / ws.max() if ws.max() > 0 else np.ones(len(rows))
    fixed = np.searchsorted(rows, exact)  # the exact rows' places in the sample
    dev = resolve_device(device)
    wt = torch.as_tensor(ws, dtype=torch.float32).to(dev)
    s, columns = layout(basis.shape[0], m)
    where = columns if columns is not None else slice(None)
    basis = np.asarray(basis, np.float32)
    centroids = None
    for _ in range(rounds):
        parts = torch.as_tensor(subvectors(Xs, m, basis.T)).to(dev)
        if centroids is None:  # the k-means' seeds (no step: the sample is below its sampling size)
            found, _ = subvector_kmeans(parts, n_centroids, wt, max_iter=0, seed=seed, device=dev, exact=fixed,
                                        codes=False)
            centroids = torch.as_tensor(found).to(dev)
        centroids[:, :len(fixed)] = parts[:, fixed]  # the exact rows' centroids follow them
        # the codes of the last step, not assigned again: the centroids are their means (one pass fewer a round)
        centroids, codes = lloyd_with_codes(parts, wt, centroids, LLOYD_STEPS, tol=0.0, fixed=len(fixed))
        decoded = centroids[torch.arange(m, device=dev)[:, None], codes.long()]  # (m, rows, s)
        coordinates = decoded.permute(1, 0, 2).reshape(len(rows), m * s).cpu().numpy()[:, where]  # (rows, r)
        u, _, vt = np.linalg.svd((coordinates * ws[:, None].astype(np.float32)).T.astype(np.float64)
                                 @ Xs.astype(np.float64), full_matrices=False)
        basis = (u @ vt).astype(np.float32)
        if progress is not None:
            progress(1)
    return basis, centroids.cpu().numpy(), codes.T.cpu().numpy()
