"""ProjectiveClustering: planted structure, invariants of Lloyd, the SVD special case, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from projclust_onnx import ConvergenceWarning, ProjectiveClustering, rank_for_budget


def planted(n_per: int, d: int, k: int, j: int, noise: float, seed: int = 0, dtype=np.float64):
    """k random j-dimensional subspaces of R^d, n_per rows on each, plus isotropic noise."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for c in range(k):
        basis, _ = np.linalg.qr(rng.standard_normal((d, j)))
        rows.append(rng.standard_normal((n_per, j)) @ basis.T)
        labels += [c] * n_per
    X = np.concatenate(rows) + noise * rng.standard_normal((n_per * k, d))
    perm = rng.permutation(len(X))
    return X[perm].astype(dtype), np.asarray(labels)[perm]


def tail_energy(X: np.ndarray, j: int) -> float:
    s = np.linalg.svd(X.astype(np.float64), compute_uv=False)
    return float((s[j:] ** 2).sum())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("init", ["kmeans", "random"])
def test_planted_partition_is_recovered_at_the_noise_floor(dtype, init):
    d, k, j, noise = 24, 4, 3, 0.01
    X, truth = planted(150, d, k, j, noise, dtype=dtype)
    model = ProjectiveClustering(k, j, init=init, random_state=0).fit(X)
    assert adjusted_rand_score(truth, model.labels_) >= 0.99
    floor = len(X) * (d - j) * noise**2  # expected energy of the noise outside each true subspace
    assert model.cost_ <= 1.1 * floor
    assert model.cost_ >= 0.8 * floor


@pytest.mark.parametrize("z", [2.0, 1.5, 1.0], ids=["z2", "z1.5", "z1"])
def test_cost_never_rises_across_iterations(z):
    X, _ = planted(80, 16, 3, 4, 0.3, seed=1)
    model = ProjectiveClustering(3, 4, z=z, init="random", anneal_steps=0, tol=0, max_iter=25,
                                 random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    history = np.asarray(model.cost_history_)
    assert len(history) >= 2
    assert np.all(np.diff(history) <= 1e-9 * history[0])


def test_bases_are_orthonormal_and_fitted_attributes_are_numpy():
    X, _ = planted(60, 20, 3, 5, 0.1)
    model = ProjectiveClustering(3, 5, random_state=0).fit(torch.as_tensor(X))
    assert isinstance(model.bases_, np.ndarray) and model.bases_.shape == (3, 20, 5)
    for basis in model.bases_:
        np.testing.assert_allclose(basis.T @ basis, np.eye(5), atol=1e-10)
    assert model.labels_.shape == (180,)
    np.testing.assert_array_equal(model.predict(X), model.labels_)


def test_integer_weights_equal_duplicated_rows():
    X, truth = planted(40, 12, 3, 2, 0.2, seed=5)
    rng = np.random.default_rng(0)
    weights = rng.integers(1, 4, size=len(X))
    init = rng.integers(0, 3, size=len(X))
    weighted = ProjectiveClustering(3, 2, init=init, random_state=0).fit(X, sample_weight=weights)
    duplicated = ProjectiveClustering(3, 2, init=np.repeat(init, weights), random_state=0).fit(
        np.repeat(X, weights, axis=0))
    np.testing.assert_array_equal(np.repeat(weighted.labels_, weights), duplicated.labels_)
    np.testing.assert_allclose(weighted.cost_, duplicated.cost_, rtol=1e-9)
    for a, b in zip(weighted.bases_, duplicated.bases_):
        np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-8)  # same subspace, any basis


def test_zero_weight_rows_do_not_move_the_subspaces():
    X, _ = planted(50, 10, 2, 3, 0.05, seed=2)
    outliers = 100 * np.random.default_rng(1).standard_normal((5, 10))
    init = np.r_[np.zeros(50, int), np.ones(50, int)]
    base = ProjectiveClustering(2, 3, init=init).fit(X)
    with_outliers = ProjectiveClustering(2, 3, init=np.r_[init, np.zeros(5, int)]).fit(
        np.vstack([X, outliers]), sample_weight=np.r_[np.ones(100), np.zeros(5)])
    for a, b in zip(base.bases_, with_outliers.bases_):
        np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-8)


def test_one_cluster_is_the_truncated_svd():
    X = np.random.default_rng(0).standard_normal((300, 40)) @ np.diag(np.linspace(3, 0.1, 40))
    model = ProjectiveClustering(1, 7).fit(X)
    np.testing.assert_allclose(model.cost_, tail_energy(X, 7), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_objective_resists_outliers_better_than_least_squares(seed):
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((10, 2)))
    X = rng.standard_normal((100, 2)) @ basis.T + 0.01 * rng.standard_normal((100, 10))
    data = np.vstack([X, 4 * rng.standard_normal((6, 10))])  # 6 scattered outliers

    def inlier_error(z: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted = ProjectiveClustering(1, 2, z=z, max_iter=200, tol=1e-12).fit(data).bases_[0]
        return float(((X - X @ fitted @ fitted.T) ** 2).sum())

    noise_floor = 100 * 8 * 0.01**2
    assert inlier_error(1.0) < 1.5 * noise_floor < inlier_error(2.0) / 100


def test_same_random_state_gives_the_same_fit():
    X, _ = planted(60, 16, 3, 3, 0.2)
    a = ProjectiveClustering(3, 3, random_state=7).fit(X)
    b = ProjectiveClustering(3, 3, random_state=7).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.bases_, b.bases_)


def test_starved_clusters_are_reseeded_from_the_worst_fit_rows():
    X, truth = planted(60, 12, 3, 3, 0.05, seed=3)
    init = np.zeros(len(X), int)
    init[0] = 1  # cluster 1 starts with one row, cluster 2 with none
    model = ProjectiveClustering(3, 3, init=init, anneal_steps=0, random_state=0).fit(X)
    assert np.bincount(model.labels_, minlength=3).min() >= 3
    # The re-seeded clusters do work: the fit beats one subspace for all rows.
    assert model.cost_ < 0.8 * ProjectiveClustering(1, 3).fit(X).cost_


def test_too_few_rows_for_every_cluster_warns():
    X = np.random.default_rng(0).standard_normal((5, 6))
    with pytest.warns(ConvergenceWarning, match="could not keep 2 clusters of at least rank=3 rows"):
        ProjectiveClustering(2, 3, init=np.array([0, 0, 0, 0, 1]), anneal_steps=0, max_iter=2).fit(X)


def test_max_iter_reached_warns():
    X, _ = planted(60, 16, 3, 3, 1.0)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        ProjectiveClustering(3, 3, init="random", anneal_steps=0, max_iter=1, tol=0, random_state=0).fit(X)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(8, 60), d=st.integers(3, 12), k=st.integers(1, 4), j=st.integers(1, 11),
       seed=st.integers(0, 2**16))
def test_cost_equals_reconstruction_error_and_transform_agrees(n, d, k, j, seed):
    j = min(j, d - 1)
    k = min(k, n)
    X = np.random.default_rng(seed).standard_normal((n, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = ProjectiveClustering(k, j, random_state=seed).fit(X)
    recon = model.reconstruct(X)
    np.testing.assert_allclose(((X - recon) ** 2).sum(), model.cost_, rtol=1e-7, atol=1e-9)
    coef = model.transform(X)
    assert coef.shape == (n, j)
    np.testing.assert_allclose(np.einsum("nj,ndj->nd", coef, model.bases_[model.labels_]), recon, atol=1e-10)
    # No row is closer to another subspace than to its own.
    dists = np.stack([((X - X @ B @ B.T) ** 2).sum(1) for B in model.bases_], axis=1)
    assert np.all(dists[np.arange(n), model.labels_] <= dists.min(1) + 1e-9)
    # With k = 1 nothing beats Eckart-Young; with more clusters the fit is never worse than it.
    assert model.cost_ <= tail_energy(X, j) * (1 + 1e-7) + 1e-9


@settings(max_examples=200, deadline=None)
@given(n=st.integers(10, 200_000), d=st.integers(2, 8192), k=st.integers(1, 300),
       compression=st.floats(0.05, 0.95))
def test_rank_for_budget_is_the_largest_rank_that_fits(n, d, k, compression):
    budget = (1 - compression) * n * d
    ids = 0 if k == 1 else n * (1 if k <= 256 else 2) / 4
    try:
        j = rank_for_budget(n, d, k, compression)
    except ValueError:
        assert n + k * d + ids > budget
        return
    assert 1 <= j < d
    assert n * j + k * j * d + ids <= budget
    assert j == d - 1 or n * (j + 1) + k * (j + 1) * d + ids > budget


def test_rank_for_budget_on_minilm_sizes():
    assert rank_for_budget(30522, 384, n_clusters=5, compression=0.4) == 216
    assert rank_for_budget(30522, 384, n_clusters=1, compression=0.4) == 227


@pytest.mark.parametrize(
    ("kwargs", "X", "match"),
    [
        ({"n_clusters": 10, "rank": 1}, np.ones((5, 3)), "n_clusters=10 must be <= n_samples=5"),
        ({"n_clusters": 2, "rank": 3}, np.ones((5, 3)), "rank=3 must be < n_features=3"),
        ({"n_clusters": 0, "rank": 1}, np.ones((5, 3)), "n_clusters=0"),
        ({"n_clusters": 1, "rank": 1, "z": 3.0}, np.ones((5, 3)), "z=3.0"),
        ({"n_clusters": 1, "rank": 1, "init": "bogus"}, np.ones((5, 3)), "init='bogus'"),
        ({"n_clusters": 1, "rank": 1}, np.ones(5), "must be 2-D"),
        ({"n_clusters": 1, "rank": 1}, np.array([[1.0, np.nan], [1, 2], [3, 4]]), "NaN or inf"),
        ({"n_clusters": 1, "rank": 1}, np.array([[1.0, np.inf], [1, 2], [3, 4]]), "NaN or inf"),
    ],
    ids=["k>n", "rank>=d", "k=0", "z", "init", "1-D", "nan", "inf"],
)
def test_bad_input_raises_value_error_naming_the_parameter(kwargs, X, match):
    with pytest.raises(ValueError, match=match):
        ProjectiveClustering(**kwargs).fit(X)


def test_negative_or_misshaped_weights_are_refused():
    X = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(ValueError, match="sample_weight must be finite and >= 0"):
        ProjectiveClustering(1, 1).fit(X, sample_weight=[1, 1, 1, 1, 1, -1])
    with pytest.raises(ValueError, match="sample_weight of shape"):
        ProjectiveClustering(1, 1).fit(X, sample_weight=[1, 1])


def test_unfitted_estimator_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        ProjectiveClustering(1, 1).predict(np.ones((2, 2)))


def test_cuda_refused_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        ProjectiveClustering(1, 1, device="cuda").fit(np.ones((4, 3)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_matches_cpu_fit():
    X, truth = planted(200, 32, 4, 4, 0.02, dtype=np.float32)
    cpu = ProjectiveClustering(4, 4, device="cpu", random_state=0).fit(X)
    gpu = ProjectiveClustering(4, 4, device="cuda", random_state=0).fit(X)
    assert adjusted_rand_score(cpu.labels_, gpu.labels_) >= 0.99
    np.testing.assert_allclose(gpu.cost_, cpu.cost_, rtol=1e-3)


@pytest.mark.slow
def test_minilm_five_clusters_beat_svd_at_the_same_budget(minilm_embedding):
    E = minilm_embedding
    total = float((E.astype(np.float64) ** 2).sum())
    svd_rank = rank_for_budget(*E.shape, n_clusters=1, compression=0.4)
    pc_rank = rank_for_budget(*E.shape, n_clusters=5, compression=0.4)
    svd = ProjectiveClustering(1, svd_rank).fit(E)
    pc = ProjectiveClustering(5, pc_rank, random_state=0).fit(E)
    np.testing.assert_allclose(svd.cost_, tail_energy(E, svd_rank), rtol=1e-3)
    assert pc.cost_ / total < svd.cost_ / total - 0.01


# ---------------------------------------------------------------------- degenerate scales (issue 9, F10)
@pytest.mark.parametrize("scale", [1e-30, 1e25], ids=["tiny", "huge"])
def test_scale_does_not_change_the_fit(scale):
    X, _ = planted(60, 12, 3, 2, 0.05, seed=2, dtype=np.float32)
    base = ProjectiveClustering(3, 2, random_state=0).fit(X)
    scaled = ProjectiveClustering(3, 2, random_state=0).fit(X * np.float32(scale))
    assert np.array_equal(base.labels_, scaled.labels_)
    np.testing.assert_allclose(scaled.cost_, base.cost_ * scale**2, rtol=1e-3)
    np.testing.assert_allclose(scaled.reconstruct(X * np.float32(scale)) / scale, base.reconstruct(X), atol=1e-4)


def test_all_zero_matrix_fits_exactly():
    model = ProjectiveClustering(3, 2, random_state=0).fit(np.zeros((30, 6), np.float32))
    assert model.cost_ == 0.0
    np.testing.assert_allclose(model.reconstruct(np.zeros((4, 6))), 0.0)


def test_positive_weights_only_on_zero_rows():
    X, _ = planted(20, 6, 2, 2, 0.1, seed=4)
    X = np.vstack([np.zeros((5, 6)), X])
    w = np.r_[np.ones(5), np.zeros(len(X) - 5)]
    assert ProjectiveClustering(2, 2, random_state=0).fit(X, sample_weight=w).cost_ == 0.0


@pytest.mark.parametrize("weight", [1e-300, 1e300], ids=["tiny", "huge"])
def test_extreme_but_valid_weights_act_as_uniform(weight):
    X, _ = planted(40, 10, 2, 2, 0.1, seed=5)
    base = ProjectiveClustering(2, 2, random_state=0).fit(X)
    model = ProjectiveClustering(2, 2, random_state=0).fit(X, sample_weight=np.full(len(X), weight))
    assert np.array_equal(base.labels_, model.labels_)
    np.testing.assert_allclose(model.cost_, base.cost_ * weight, rtol=1e-6)


def test_fit_leaves_torch_thread_count_alone():
    before = torch.get_num_threads()
    ProjectiveClustering(2, 2, random_state=0).fit(planted(20, 6, 2, 2, 0.1)[0])
    assert torch.get_num_threads() == before


def test_one_progress_bar_per_phase_with_totals(capsys, monkeypatch):
    from projclust_onnx.common import progress

    monkeypatch.setattr(progress, "interactive", lambda: True)  # a terminal: the bars draw
    X, _ = planted(40, 10, 2, 2, 0.1, seed=6)
    ProjectiveClustering(2, 2, n_init=3, anneal_steps=4, max_iter=5, random_state=0, verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "seeding" in err and "3/3" in err
    assert "annealing" in err and "4/4" in err
    assert "Lloyd" in err


def test_off_a_terminal_each_bar_is_one_line_of_counts(capsys, monkeypatch):
    """verbose=True with stderr a file or pipe and no phase running: a line per bar, no redraws."""
    from projclust_onnx.common import progress

    monkeypatch.setattr(progress, "interactive", lambda: False)
    X, _ = planted(40, 10, 2, 2, 0.1, seed=6)
    ProjectiveClustering(2, 2, n_init=3, anneal_steps=4, max_iter=5, random_state=0, verbose=True).fit(X)
    err = capsys.readouterr().err
    assert "\r" not in err and "seeding: 3 steps" in err and "annealing: 4 steps" in err and "Lloyd" in err


@settings(max_examples=200, deadline=None)
@given(n=st.integers(10, 200_000), d=st.integers(17, 4096), k=st.integers(1, 64),
       compression=st.floats(0.3, 0.98), quantize=st.sampled_from(["int8", "int4"]),
       block=st.sampled_from([16, 32, 64, 128]))
def test_quantized_rank_is_the_largest_whole_block_rank_that_fits(n, d, k, compression, quantize, block):
    """Issue 8: the byte budget with quantized U, including packed zero points that round per block."""
    from projclust_onnx.core.budget import factorized_bytes

    budget = (1 - compression) * n * d * 4
    try:
        j = rank_for_budget(n, d, k, compression, quantize=quantize, block_size=block)
    except ValueError:
        assert factorized_bytes(n, d, k, block, 4, quantize, block) > budget or block >= d
        return
    assert j % block == 0 and block <= j < d
    assert factorized_bytes(n, d, k, j, 4, quantize, block) <= budget
    assert j + block >= d or factorized_bytes(n, d, k, j + block, 4, quantize, block) > budget


# ---------------------------------------------------------------------- the scikit-learn estimator API
def test_get_params_and_set_params_round_trip():
    model = ProjectiveClustering(3, 4, z=1.5, random_state=2)
    params = model.get_params()
    assert params["n_clusters"] == 3 and params["rank"] == 4 and params["z"] == 1.5 and params["random_state"] == 2
    assert set(params) == {"n_clusters", "rank", "init", "n_init", "anneal_steps", "sample_size", "max_iter", "tol",
                           "z", "device", "random_state", "verbose"}
    assert model.get_params(deep=False) == params
    assert model.set_params(rank=6, tol=1e-3) is model
    assert model.rank == 6 and model.tol == 1e-3
    assert ProjectiveClustering(**params).set_params(rank=6, tol=1e-3).get_params() == model.get_params()


def test_set_params_refuses_an_unknown_name_and_sets_nothing():
    model = ProjectiveClustering(3, 4)
    with pytest.raises(ValueError, match=r"'ranks'.*valid parameters: .*n_clusters.*rank"):
        model.set_params(rank=5, ranks=5)
    assert model.rank == 4


def test_sklearn_clone_gives_an_unfitted_estimator_with_equal_params():
    from sklearn.base import clone

    X, _ = planted(30, 8, 2, 2, 0.1)
    model = ProjectiveClustering(2, 2, init=np.arange(60) % 2, random_state=0).fit(X)
    copied = clone(model)
    assert copied is not model and not hasattr(copied, "bases_") and not hasattr(copied, "labels_")
    params = copied.get_params()
    np.testing.assert_array_equal(params.pop("init"), model.init)
    assert params == {k: v for k, v in model.get_params().items() if k != "init"}
    np.testing.assert_array_equal(copied.fit(X).labels_, model.labels_)


def test_fit_predict_equals_fit_labels():
    X, _ = planted(40, 10, 3, 2, 0.1, seed=1)
    np.testing.assert_array_equal(ProjectiveClustering(3, 2, random_state=4).fit_predict(X),
                                  ProjectiveClustering(3, 2, random_state=4).fit(X).labels_)


def test_sample_weight_by_keyword_or_after_an_ignored_y():
    X, _ = planted(40, 10, 3, 2, 0.3, seed=2)
    w = np.random.default_rng(0).integers(1, 5, len(X))
    keyword = ProjectiveClustering(3, 2, random_state=0).fit(X, sample_weight=w)
    positional = ProjectiveClustering(3, 2, random_state=0).fit(X, np.zeros(len(X)), w)
    np.testing.assert_array_equal(positional.labels_, keyword.labels_)
    np.testing.assert_array_equal(positional.bases_, keyword.bases_)
    assert positional.cost_ == keyword.cost_
    np.testing.assert_array_equal(ProjectiveClustering(3, 2, random_state=0).fit_predict(X, sample_weight=w),
                                  keyword.labels_)
    assert ProjectiveClustering(3, 2, random_state=0).fit(X).cost_ != keyword.cost_  # the weights are used


def test_truncate_is_a_copy_on_the_leading_basis_vectors():
    X, _ = planted(80, 20, 3, 6, 0.1, seed=3)
    model = ProjectiveClustering(3, 6, random_state=0).fit(X)
    bases, labels, cost = model.bases_.copy(), model.labels_.copy(), model.cost_
    short = model.truncate(2)
    assert short is not model and short.rank == 2 and short.get_params()["rank"] == 2
    assert short.bases_.shape == (3, 20, 2) and short.bases_.flags.c_contiguous
    np.testing.assert_array_equal(short.bases_, bases[:, :, :2])
    np.testing.assert_array_equal(short.labels_, labels)
    assert not hasattr(short, "cost_") and short.transform(X).shape == (len(X), 2)
    # the original is untouched, the copy shares no array with it
    assert model.rank == 6 and model.cost_ == cost
    np.testing.assert_array_equal(model.bases_, bases)
    np.testing.assert_array_equal(model.labels_, labels)
    assert not np.shares_memory(short.labels_, model.labels_)
    same = model.truncate(6)
    assert same is not model and same.cost_ == cost
    np.testing.assert_array_equal(same.predict_transform(X)[1], model.predict_transform(X)[1])


def test_truncate_matches_the_chooser_s_hand_built_copy():
    """What the chooser built by hand before truncate: the same predictions, bit for bit."""
    X, _ = planted(60, 12, 3, 8, 0.1, seed=4, dtype=np.float32)
    model = ProjectiveClustering(3, 8, random_state=0).fit(X)
    for rank in (1, 5, 7):
        by_hand = ProjectiveClustering(3, rank)
        by_hand.bases_ = np.ascontiguousarray(model.bases_[:, :, :rank])
        by_hand.n_features_in_ = model.n_features_in_
        for a, b in zip(model.truncate(rank).predict_transform(X), by_hand.predict_transform(X)):
            np.testing.assert_array_equal(a, b)


def test_truncated_error_never_rises_with_rank_on_planted_data():
    X, _ = planted(80, 20, 3, 6, 0.1, seed=5)
    model = ProjectiveClustering(3, 6, random_state=0).fit(X)
    errors = [float(((X - model.truncate(r).reconstruct(X)) ** 2).sum()) for r in range(1, 7)]
    assert all(a >= b * (1 - 1e-12) for a, b in zip(errors, errors[1:]))
    assert errors[0] > 10 * errors[-1]  # the planted rank-6 structure is lost at rank 1
    np.testing.assert_allclose(errors[-1], model.cost_, rtol=1e-9)


@pytest.mark.parametrize(("rank", "match"), [(7, "rank=7 must be <= the fitted rank=6"),
                                             (0, "rank=0 must be a positive integer"),
                                             (2.5, "rank=2.5 must be a positive integer")])
def test_truncate_refuses_a_rank_outside_one_to_the_fitted_rank(rank, match):
    model = ProjectiveClustering(2, 6, random_state=0).fit(planted(30, 10, 2, 3, 0.1)[0])
    with pytest.raises(ValueError, match=match):
        model.truncate(rank)


def test_truncate_before_fit_raises_not_fitted():
    from projclust_onnx.storage.clustering import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted") as err:
        ProjectiveClustering(2, 2).truncate(1)
    assert isinstance(err.value, ValueError) and isinstance(err.value, AttributeError)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(12, 60), d=st.integers(3, 10), k=st.integers(1, 3), j=st.integers(2, 9),
       seed=st.integers(0, 2**16))
def test_truncated_rows_are_no_closer_than_at_a_higher_rank(n, d, k, j, seed):
    """Nested subspaces: every row's distance to its nearest subspace can only fall as rank grows."""
    j = min(j, d - 1)
    X = np.random.default_rng(seed).standard_normal((n, d))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = ProjectiveClustering(k, j, random_state=seed).fit(X)
    row_errors = [((X - model.truncate(r).reconstruct(X)) ** 2).sum(1) for r in range(1, j + 1)]
    for low, high in zip(row_errors, row_errors[1:]):
        assert np.all(low >= high - 1e-9 * (1 + (X * X).sum(1)))


def test_problem_sample_keeps_weights_usable():
    from projclust_onnx.storage.clustering import _generator, _Problem

    X = torch.arange(12.0).reshape(4, 3)
    problem = _Problem(X, torch.tensor([0.0, 0.0, 1.0, 2.0]), (X * X).sum(1), 2, 1, 2.0, _generator(0))
    assert problem.sample(None) is problem
    weightless = problem.sample(torch.tensor([0, 1]))
    assert torch.equal(weightless.X, X[:2]) and torch.equal(weightless.w, torch.ones(2))
    assert weightless.generator is problem.generator and weightless.k == 2
    assert torch.equal(problem.sample(torch.tensor([1, 3])).w, torch.tensor([0.0, 2.0]))
