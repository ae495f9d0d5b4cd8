"""EmbeddingFactorization: reconstruction, sizes and the safetensors round trip."""

from __future__ import annotations

import numpy as np
import pytest

from projclust_onnx import EmbeddingFactorization, ProjectiveClustering, factorized_size


@pytest.fixture
def fitted():
    X = np.random.default_rng(0).standard_normal((120, 16)).astype(np.float32)
    model = ProjectiveClustering(3, 4, random_state=0).fit(X)
    return X, model, EmbeddingFactorization.from_estimator(model, X)


def test_reconstruction_matches_the_estimator(fitted):
    X, model, fact = fitted
    np.testing.assert_allclose(fact.reconstruct(), model.reconstruct(X), atol=1e-5)
    total = float((X.astype(np.float64) ** 2).sum())
    np.testing.assert_allclose(fact.relative_error(X), model.cost_ / total, rtol=1e-4)


def test_shapes_sizes_and_id_dtype(fitted):
    X, _, fact = fitted
    assert (fact.n_rows, fact.rank, fact.n_clusters, fact.dim) == (120, 4, 3, 16)
    assert fact.labels.dtype == np.uint8
    assert fact.n_params == 120 * 4 + 3 * 4 * 16
    assert fact.nbytes == 4 * fact.n_params + 120
    assert fact.size_in_params() == factorized_size(120, 16, 3, 4)


def test_save_load_round_trip(fitted, tmp_path):
    _, _, fact = fitted
    fact.save(tmp_path / "f.safetensors")
    back = EmbeddingFactorization.load(tmp_path / "f.safetensors")
    np.testing.assert_array_equal(back.labels, fact.labels)
    np.testing.assert_array_equal(back.U, fact.U)
    np.testing.assert_array_equal(back.V, fact.V)


def test_load_refuses_a_foreign_file(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable factorization"):
        EmbeddingFactorization.load(tmp_path / "bad.safetensors")


def test_inconsistent_arrays_are_refused():
    with pytest.raises(ValueError, match="labels reach 3"):
        EmbeddingFactorization(labels=np.array([0, 3]), U=np.zeros((2, 1)), V=np.zeros((2, 1, 4)))


@pytest.mark.parametrize(("k", "j", "bits"), [(1, 6, None), (3, 8, None), (4, 16, 4), (2, 32, 8)])
def test_factors_are_a_registered_encoding_whose_bytes_are_what_is_stored(k, j, bits):
    """Issue 28: the factorization is one entry of the registry: format_of knows it, its nbytes is the
    stored factorization's, its encode is the clustering then U's storage, its decode the reconstruction."""
    from projclust_onnx.storage.blocks import BLOCK_FORMATS
    from projclust_onnx.storage.factorization import Factors
    from projclust_onnx.storage.float import FloatStorage
    from projclust_onnx.storage.registry import format_of, method_format

    rng = np.random.default_rng(k * 100 + j)
    X = rng.standard_normal((300, 48)).astype(np.float32)
    u = FloatStorage() if bits is None else BLOCK_FORMATS[bits](j if j % 16 == 0 else 16)
    storage = Factors(k, j, u, estimator=dict(n_init=1, random_state=0))
    stored = storage.encode(X)
    assert format_of(stored) == storage and method_format("svd") is Factors is method_format("projclust")
    assert storage.nbytes(300, 48) == stored.nbytes
    np.testing.assert_array_equal(Factors.decode(stored), stored.reconstruct())
    fields = storage.report_fields(stored, 300, 48)
    assert fields["method"] == ("svd" if k == 1 else "projclust") and fields["rank"] == j
    assert fields["quantize"] == u.name and fields["storage"] == (None if bits is None else u.label)
    direct = EmbeddingFactorization.from_estimator(ProjectiveClustering(k, j, n_init=1, random_state=0).fit(X), X)
    if bits is None:  # encode is exactly the estimator's factorization
        np.testing.assert_array_equal(stored.U, direct.U)
        np.testing.assert_array_equal(stored.V, direct.V)
