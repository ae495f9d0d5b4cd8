"""The chooser (core/chooser.py): scores, the spectrum bound and pruning, by invariants."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_clustering import planted

from projclust_onnx import ProjectiveClustering
from projclust_onnx.core import chooser
from projclust_onnx.core.chooser import choose, sample_estimate, spectrum_tail, weighted_error
from projclust_onnx.storage.factorization import EmbeddingFactorization
from projclust_onnx.storage.registry import FORMATS


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


@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(k=st.sampled_from([2, 3, 5, 8]), rank=st.sampled_from([32, 96, 160]), seed=st.integers(0, 99))
def test_sample_estimate_of_real_rows_is_optimistic_within_the_margin(minilm_embedding, k, rank, seed):
    """The chooser skips a k whose sample estimate, times the margin, loses; on a real table (12,000 of
    MiniLM's rows, estimated from 2,048) a fit of every row never gets below margin x estimate. (On toy
    tables of sharply planted subspaces a sample fit can settle in a poor optimum the full fit avoids:
    the estimate is a heuristic for embedding tables, not a bound.)"""
    rows = np.random.default_rng(seed).choice(len(minilm_embedding), 12000, replace=False)
    X = np.asarray(minilm_embedding[np.sort(rows)], dtype=np.float32)
    with mock.patch.object(chooser, "_ESTIMATE_ROWS", 2048):
        estimate = sample_estimate(X, k, [rank, rank // 2], seed=seed)
    assert estimate is not None and estimate[rank // 2] >= estimate[rank]  # fewer directions leave more
    full = ProjectiveClustering(k, rank, n_init=3, anneal_steps=4, random_state=seed).fit(X)
    error = full.cost_ / float((X.astype(np.float64) ** 2).sum())
    assert estimate[rank] <= error  # optimistic: the subspaces overfit their sample
    assert error >= chooser._ESTIMATE_MARGIN * estimate[rank]


def test_sample_estimate_declines_tables_a_sample_would_not_speed_up():
    X, _ = planted(100, 16, 2, 3, 0.1, dtype=np.float32)
    assert sample_estimate(X, 2, [3]) is None  # 8192 rows would be the whole table


def test_chooser_skips_the_fits_a_sample_shows_cannot_win(monkeypatch):
    """Isotropic rows: plain int8 wins at 4x by orders of magnitude; the factors' spectrum bound is 0 where
    k j >= d, so only the sample estimate spares their full fits."""
    X = np.random.default_rng(0).standard_normal((4000, 32)).astype(np.float32)
    monkeypatch.setattr(chooser, "_ESTIMATE_ROWS", 256)
    fitted = []

    def fit(k, rank):
        fitted.append(k)
        return ProjectiveClustering(k, rank, random_state=0).fit(X)

    choice = choose(X, X.nbytes / 4, None, clusters=(3, 5), block_sizes=(32,), fit=fit,
                    formats=[c for c in FORMATS if not c.sized])
    assert choice.best.method == "quantize" and fitted == []
    by_sample = [c for c in choice.candidates if c.bound == "sample"]
    assert by_sample and all(c.pruned and c.error >= choice.best.error for c in by_sample)
    assert all("sample of rows already loses" in c.label for c in by_sample)


def test_sample_estimates_keep_the_winner_where_clusters_win(monkeypatch):
    """Rows on 4 planted 6-dimensional subspaces of R^32 at 1/8 of the bytes: projective clustering wins, and
    the chooser picks the same candidate with the estimates on as with them off."""
    X, _ = planted(1000, 32, 4, 6, 0.02, seed=3, dtype=np.float32)

    def fit(k, rank):
        return ProjectiveClustering(k, rank, n_init=3, anneal_steps=2, random_state=0).fit(X)

    def run(rows):
        monkeypatch.setattr(chooser, "_ESTIMATE_ROWS", rows)
        return choose(X, X.nbytes / 8, None, clusters=(2, 4), block_sizes=(32,), fit=fit,
                      formats=[c for c in FORMATS if c.branches])

    calls = []
    real = chooser.sample_estimate
    monkeypatch.setattr(chooser, "sample_estimate", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    on, off = run(256), run(10**9)
    assert 4 in calls  # the estimate ran for k=4 (and declined nothing it should not)
    assert on.best.method == "projclust" and on.best.n_clusters == 4
    assert (on.best.label, on.best.error) == (off.best.label, off.best.error)
