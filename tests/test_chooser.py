"""The chooser (core/chooser.py): scores, the spectrum bound and pruning, by invariants."""

from __future__ import annotations

import numpy as np
import pytest
from test_clustering import planted

from projclust_onnx import ProjectiveClustering
from projclust_onnx.core.chooser import choose, spectrum_tail, weighted_error
from projclust_onnx.core.factorization import EmbeddingFactorization


def test_weighted_error_of_a_factorization_equals_that_of_its_dense_table():
    X, _ = planted(60, 12, 3, 4, 0.1, seed=8, dtype=np.float32)
    f = EmbeddingFactorization.from_estimator(ProjectiveClustering(3, 4, random_state=0).fit(X), X)
    w = np.random.default_rng(0).random(len(X))
    assert weighted_error(X, f, w) == pytest.approx(weighted_error(X, f.reconstruct(), w), rel=1e-9)
    assert weighted_error(X, f, None) == pytest.approx(f.relative_error(X), rel=1e-9)


def test_spectrum_tail_bounds_every_candidate_and_pruned_ones_could_not_win():
    X, _ = planted(300, 32, 3, 6, 0.05, seed=9, dtype=np.float32)
    tail = spectrum_tail(X)
    assert tail[0] == pytest.approx(1.0) and tail[-1] == 0.0 and np.all(np.diff(tail) <= 1e-12)

    def fit(k, rank):
        return ProjectiveClustering(k, rank, n_init=2, anneal_steps=2, random_state=0).fit(X)

    choice = choose(X, X.nbytes / 3, None, clusters=(3, 5), block_sizes=(32,), fit=fit)
    built = [c for c in choice.candidates if not c.pruned]
    assert not choice.best.pruned and choice.best.error == min(c.error for c in built)
    for c in built:
        if c.method != "quantize":  # the score is never below the best rank-(k j) error
            assert c.error >= tail[min(c.n_clusters * c.rank, 32)] * (1 - 1e-6)
    for c in choice.candidates:
        if c.pruned:
            assert c.error >= choice.best.error and "not built" in c.label
