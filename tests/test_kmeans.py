"""storage/kmeans.py: weighted k-means of the sub-vectors."""

from __future__ import annotations

import numpy as np
import torch

from projclust_onnx.storage.kmeans import subvector_kmeans


def test_weights_decide_where_the_centroids_go():
    """Three tight groups, two centroids: whichever group is heavy, a centroid sits on it (within the pull of
    a light group it may share with), where unweighted k-means would split the groups by their spread."""
    rng = np.random.default_rng(0)
    groups = [rng.normal(c, 0.01, (50, 2)) for c in (0.0, 1.0, 5.0)]
    X = np.concatenate(groups).astype(np.float32)
    for heavy in range(3):
        w = np.ones(150)
        w[heavy * 50:(heavy + 1) * 50] = 1000.0
        centroids, codes = subvector_kmeans(torch.as_tensor(X[None]), 2, torch.as_tensor(w), seed=1)
        mine = codes[heavy * 50:(heavy + 1) * 50, 0]
        assert len(set(mine.tolist())) == 1  # the heavy group sits in one cluster, its centroid on the group
        np.testing.assert_allclose(centroids[0, mine[0]], groups[heavy].mean(0), atol=0.01)

