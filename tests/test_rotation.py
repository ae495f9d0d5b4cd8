"""storage/rotation.py: OPQ's rotation refinement."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projclust_onnx.storage.subvectors import layout


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(40, 400), d=st.integers(4, 24), m_frac=st.floats(0.1, 0.5), rank_frac=st.floats(0.5, 1.0),
       rounds=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_rotation_rounds_keep_an_orthonormal_basis_and_each_procrustes_step_lowers_the_error(n, d, m_frac,
                                                                                          rank_frac, rounds, seed):
    """OPQ's rotation step is the orthogonal Procrustes solution: for the codes it was fitted to, no
    orthonormal basis maps the decoded coordinates closer to the rows (weighted), the basis it starts from
    included."""
    from projclust_onnx.storage.rotation import refine_rotation

    rank = max(2, int(round(rank_frac * d)))
    m = max(1, min(rank // 2, int(round(m_frac * rank))))
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * np.linspace(2, 0.1, d)).astype(np.float32)
    w = rng.uniform(0.1, 1.0, n)
    start = np.linalg.qr(rng.normal(size=(d, rank)))[0].T.astype(np.float32)
    basis, centroids, codes = refine_rotation(X, w, start, m, 16, rounds, seed=seed, device="cpu")
    assert basis.shape == (rank, d) and centroids.shape[0] == m and codes.shape == (n, m)
    np.testing.assert_allclose(basis @ basis.T, np.eye(rank), atol=1e-4)
    # the last round's codes and centroids, read through the basis before and after the step
    previous = refine_rotation(X, w, start, m, 16, rounds - 1, seed=seed, device="cpu")[0] if rounds > 1 \
        else start
    s, columns = layout(rank, m)
    decoded = centroids[np.arange(m), codes].reshape(n, m * s)[:, columns if columns is not None else slice(None)]

    def error(b):
        return float((w * ((X - decoded @ b) ** 2).sum(1)).sum())

    assert error(basis) <= error(previous) * (1 + 1e-4) + 1e-6

