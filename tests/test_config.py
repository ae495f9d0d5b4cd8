"""ProjClustConfig: defaults, validation and the JSON round trip."""

from __future__ import annotations

import json

import pytest

from projclust_onnx import ProjClustConfig


def test_json_round_trip(tmp_path):
    config = ProjClustConfig(n_clusters=8, compression=0.3, layout="onehot", calibration_text=["a.txt"], seed=4)
    path = config.save_pretrained(tmp_path)
    assert path.name == "projclust_config.json"
    assert json.loads(path.read_text())["n_clusters"] == 8
    assert ProjClustConfig.from_pretrained(tmp_path) == config
    assert ProjClustConfig.from_dict(config.to_dict()) == config


def test_defaults_resolve_by_method():
    assert ProjClustConfig().n_clusters == 5
    assert ProjClustConfig(method="svd").n_clusters == 1
    assert ProjClustConfig(rank=100).compression is None
    assert ProjClustConfig().rank_for(30522, 384) == 216


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "pca"}, "method='pca'"),
        ({"method": "svd", "n_clusters": 5}, "n_clusters=5 must be 1"),
        ({"compression": 1.2}, "compression=1.2 must lie in"),
        ({"compression": None}, "give compression"),
        ({"layout": "dense"}, "layout='dense'"),
        ({"calibration_smoothing": -1}, "calibration_smoothing=-1"),
        ({"n_clusters": 0}, "n_clusters=0"),
    ],
)
def test_invalid_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProjClustConfig(**kwargs)


def test_unknown_keys_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown ProjClustConfig keys \\['clusters'\\]"):
        ProjClustConfig.from_dict({"clusters": 5})
    with pytest.raises(ValueError, match="projclust_config.json not found"):
        ProjClustConfig.from_pretrained(tmp_path)
