"""storage/subvectors.py: how a row is cut into sub-vectors."""

from __future__ import annotations

import numpy as np
import pytest

from projclust_onnx.storage.subvectors import layout


def test_the_layout_covers_every_column_once():
    for d in range(1, 50):
        for m in range(1, d + 1):
            s, columns = layout(d, m)
            if columns is None:
                assert m * s == d
            else:
                assert len(np.unique(columns)) == d and columns.max() < m * s
    with pytest.raises(ValueError, match="sub-vectors"):
        layout(8, 9)

