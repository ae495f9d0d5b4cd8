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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_clusters": 2.5}, "n_clusters=2.5 must be a whole number"),
        ({"n_clusters": float("nan")}, "n_clusters=nan must be a whole number"),
        ({"n_clusters": True}, "n_clusters=True must be a whole number"),
        ({"rank": 2.5}, "rank=2.5 must be a whole number"),
        ({"n_init": 0}, "n_init=0 must be >= 1"),
        ({"max_iter": 0}, "max_iter=0 must be >= 1"),
        ({"tol": -1}, "tol=-1 must be >= 0"),
        ({"z": 3}, "z=3 must lie in \\[1, 2\\]"),
        ({"init": "foo"}, "init='foo' must be one of"),
        ({"seed": "a"}, "seed='a' must be a whole number"),
        ({"seed": -1}, "seed=-1 must be in"),
        ({"seed": 2**64}, "seed=18446744073709551616 must be in"),
        ({"device": "foo"}, "device='foo' must be"),
        ({"anneal_steps": -1}, "anneal_steps=-1 must be >= 0"),
        ({"special_token_weight": float("nan")}, "special_token_weight=nan must be a finite number"),
        ({"calibration_smoothing": float("inf")}, "calibration_smoothing=inf must be a finite number"),
        ({"compression": float("nan")}, "compression=nan must be a finite number"),
    ],
)
def test_every_field_is_validated(kwargs, match):
    """Issue 9, F11: what the dataclass accepted before and failed on (or silently ignored) later."""
    with pytest.raises(ValueError, match=match):
        ProjClustConfig(**kwargs)


def test_one_calibration_file_is_not_split_into_characters():
    assert ProjClustConfig(calibration_text="corpus.txt").calibration_text == ["corpus.txt"]


def test_errors_name_the_flag_on_the_command_line():
    from projclust_onnx.errors import SettingError

    with pytest.raises(SettingError) as caught:
        ProjClustConfig(n_clusters=0)
    assert str(caught.value) == "n_clusters=0 must be >= 1"
    assert caught.value.for_cli() == "--clusters=0 must be >= 1"


def test_rank_that_saves_nothing_is_refused():
    with pytest.raises(ValueError, match="rank=370 with n_clusters=5 stores .* no fewer than"):
        ProjClustConfig(rank=370).rank_for(30522, 384)
    assert ProjClustConfig(rank=200).rank_for(30522, 384) == 200
