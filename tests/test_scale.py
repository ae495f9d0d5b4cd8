"""Issue 18: the fitting core at scale (samples, blocks, k=1, pruning, memory, progress), by invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score
from test_clustering import planted

from projclust_onnx import ProjectiveClustering
from projclust_onnx.core.chooser import weighted_error
from projclust_onnx.storage import clustering as core
from projclust_onnx.storage.clustering import check_fit_memory, fit_memory_bytes
from projclust_onnx.storage.factorization import EmbeddingFactorization


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so that every blocked loop runs many times on small data."""
    monkeypatch.setattr(core, "_ASSIGN_BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(core, "_DIST_BLOCK_ELEMENTS", 64)


def test_planted_partition_is_recovered_from_samples():
    """k-means on 400 of 1200 rows, seeds scored on 480 and annealing on samples growing to every row
    still find the planted fit."""
    X, truth = planted(300, 24, 4, 3, 0.01, seed=4)
    model = ProjectiveClustering(4, 3, sample_size=400, random_state=0).fit(X)
    assert adjusted_rand_score(truth, model.labels_) >= 0.99
    assert model.cost_ <= 1.1 * len(X) * (24 - 3) * 0.01**2


def test_blocked_steps_equal_one_block(small_blocks):
    X, _ = planted(50, 10, 3, 2, 0.1, seed=5)
    blocked = ProjectiveClustering(3, 2, random_state=1).fit(X)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "_ASSIGN_BLOCK_ELEMENTS", 1 << 22)
        mp.setattr(core, "_DIST_BLOCK_ELEMENTS", 1 << 22)
        whole = ProjectiveClustering(3, 2, random_state=1).fit(X)
    np.testing.assert_array_equal(blocked.labels_, whole.labels_)
    np.testing.assert_allclose(blocked.cost_, whole.cost_, rtol=1e-9)
    np.testing.assert_allclose(blocked.transform(X), whole.transform(X), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(3, 12), j=st.integers(1, 11), k=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_distances_through_the_complement_equal_those_through_the_basis(d, j, k, seed):
    j = min(j, d - 1)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, d, generator=g, dtype=torch.float64)
    bases = torch.linalg.qr(torch.randn(k, d, j, generator=g, dtype=torch.float64)).Q
    direct = ((X * X).sum(1)[:, None] - torch.einsum("nd,kdj->nkj", X, bases).square().sum(2)).clamp_min(0)
    got = core._distances(X, None, core._as_subspaces(bases))
    torch.testing.assert_close(got, direct, atol=1e-10, rtol=1e-10)


def test_incremental_moments_equal_a_full_sum():
    g = torch.Generator().manual_seed(0)
    X, w = torch.randn(300, 7, generator=g, dtype=torch.float64), torch.rand(300, generator=g, dtype=torch.float64)
    before = torch.randint(0, 3, (300,), generator=g)
    after = before.clone()
    after[:40] = (after[:40] + 1) % 3
    moments = core._Moments(X, 3)
    moments.update(w, before)
    torch.testing.assert_close(moments.update(w, after), core._moments(X, w, after, 3))


def test_one_cluster_skips_seeding_and_annealing(capsys, monkeypatch):
    from projclust_onnx.common import progress

    monkeypatch.setattr(progress, "interactive", lambda: True)  # a terminal: the bars draw
    X, _ = planted(40, 10, 1, 3, 0.1, seed=6)
    model = ProjectiveClustering(1, 3, verbose=True, random_state=0).fit(X)
    err = capsys.readouterr().err
    assert "seeding" not in err and "annealing" not in err and "Lloyd" in err
    assert model.n_iter_ == 1 and len(model.cost_history_) == 1


def test_predict_needs_no_copy_of_extreme_tables():
    """predict scales per block: a 1e25 table is assigned as the unit one is."""
    X, _ = planted(40, 10, 2, 6, 0.05, seed=7, dtype=np.float32)
    model = ProjectiveClustering(2, 6, random_state=0).fit(X)
    np.testing.assert_array_equal(model.predict(X * np.float32(1e25)), model.labels_)


def test_memory_estimate_grows_with_the_table_and_refuses_in_one_line():
    small, large = fit_memory_bytes(30522, 384, 5, 216), fit_memory_bytes(250_000, 384, 5, 216)
    assert 30522 * 384 * 4 < small < large
    assert large < 3 * 250_000 * 384 * 4  # within issue 18's bound of three tables
    check_fit_memory(1000, 64, 3, 16, available=1 << 40)
    with pytest.raises(ValueError, match=r"250000 x 384 table at n_clusters=5, rank=216 needs about") as err:
        check_fit_memory(250_000, 384, 5, 216, available=1 << 20)
    assert "\n" not in str(err.value)


def test_bad_sample_size_is_refused():
    with pytest.raises(ValueError, match="sample_size=0 must be a positive integer or None"):
        ProjectiveClustering(2, 2, sample_size=0).fit(np.eye(6))


@pytest.mark.parametrize("bits", [4, 8])
def test_quantizing_in_pieces_equals_quantizing_whole(monkeypatch, bits):
    from projclust_onnx.storage import quantization
    from projclust_onnx.storage.quantization import BlockQuantized, PerTensorQuantized

    M = np.random.default_rng(1).standard_normal((50, 64)).astype(np.float32)
    whole_b, whole_t = BlockQuantized.quantize(M, bits, 32), PerTensorQuantized.quantize(M)
    monkeypatch.setattr(quantization, "_ROWS_PER_PIECE", 7)
    pieces_b, pieces_t = BlockQuantized.quantize(M, bits, 32), PerTensorQuantized.quantize(M)
    for name in ("data", "scales", "zero_points"):
        np.testing.assert_array_equal(getattr(pieces_b, name), getattr(whole_b, name))
    np.testing.assert_array_equal(pieces_t.data, whole_t.data)
    assert weighted_error(M, whole_b, None) == pytest.approx(weighted_error(M, whole_b.dequantize(), None), rel=1e-12)


def test_cluster_tail_is_the_per_cluster_eckart_young_bound():
    from projclust_onnx.storage.clustering import cluster_tail

    X, labels = planted(40, 9, 3, 2, 0.3, seed=10, dtype=np.float32)
    want = sum((np.linalg.svd(X[labels == c].astype(np.float64), compute_uv=False)[4:] ** 2).sum()
               for c in range(3)) / (X.astype(np.float64) ** 2).sum()
    assert cluster_tail(X, labels, 3, 4) == pytest.approx(want, rel=1e-5)
    f = EmbeddingFactorization.from_estimator(ProjectiveClustering(3, 4, init=labels, anneal_steps=0).fit(X), X)
    assert f.relative_error(X) >= cluster_tail(X, f.labels, 3, 4) * (1 - 1e-5)
