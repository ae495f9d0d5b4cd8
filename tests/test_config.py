"""ProjClustConfig: defaults, validation and the JSON round trip."""

from __future__ import annotations

import json

import numpy as np
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
    from projclust_onnx.common.errors import SettingError

    with pytest.raises(SettingError) as caught:
        ProjClustConfig(n_clusters=0)
    assert str(caught.value) == "n_clusters=0 must be >= 1"
    assert caught.value.for_cli() == "--clusters=0 must be >= 1"


def test_rank_that_saves_nothing_is_refused():
    with pytest.raises(ValueError, match="rank=370 with n_clusters=5 stores .* no fewer than"):
        ProjClustConfig(rank=370).rank_for(30522, 384)
    assert ProjClustConfig(rank=200).rank_for(30522, 384) == 200


@pytest.mark.parametrize(("kwargs", "attr", "expected"), [
    ({"n_clusters": np.int64(4)}, "n_clusters", 4),
    ({"rank": np.int32(3)}, "rank", 3),
    ({"compression": np.float32(0.5)}, "compression", 0.5),
    ({"calibration_smoothing": np.float64(2.0)}, "calibration_smoothing", 2.0),
    ({"seed": np.uint8(7)}, "seed", 7),
    ({"target_ratio": np.int16(10)}, "target_ratio", 10.0),
], ids=["int64", "int32", "float32", "float64", "uint8", "int16-ratio"])
def test_numpy_scalars_are_stored_as_python_numbers(tmp_path, kwargs, attr, expected):
    """Issue 16, 5: numpy scalars are numbers, kept as plain int/float so that the saved JSON works."""
    config = ProjClustConfig(**kwargs)
    value = getattr(config, attr)
    assert value == expected and type(value) is type(expected)
    config.save_pretrained(tmp_path)
    assert ProjClustConfig.from_pretrained(tmp_path) == config


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"calibration_text": 123}, "calibration_text=123 must be a path or a list of paths"),
    ({"calibration_text": ["a.txt", None]}, "calibration_text holds None, which is not a path"),
    ({"calibration_dataset": 5}, "calibration_dataset=5 must be a path"),
    ({"calibration_column": 3}, "calibration_column=3 must be a string"),
    ({"ids_input": None}, "ids_input=None must be a string"),
    ({"compression": "0.4"}, "compression='0.4' must be a finite number"),
    ({"n_clusters": np.bool_(True)}, "n_clusters=.*True.* must be a whole number"),
    ({"special_token_weight": True}, "special_token_weight=True must be a finite number"),
    ({"method": ["svd"]}, r"method=\['svd'\] must be one of"),
], ids=["text-int", "text-list-none", "dataset-int", "column-int", "ids-none", "compression-str", "np-bool",
        "bool-number", "method-list"])
def test_wrong_types_are_refused_naming_the_parameter(kwargs, message):
    """Issue 16, 5: a TypeError that is also a ValueError, naming the parameter (not a bare TypeError)."""
    with pytest.raises(TypeError, match=message) as caught:
        ProjClustConfig(**kwargs)
    assert isinstance(caught.value, ValueError)


def test_no_calibration_text_may_be_none():
    assert ProjClustConfig(calibration_text=None).calibration_text == []


def test_huge_special_token_weight_is_refused_up_front():
    """Issue 16, 6: 1e308 overflowed during clustering; now refused with the bound."""
    from projclust_onnx.common.errors import SettingError

    with pytest.raises(SettingError) as caught:
        ProjClustConfig(special_token_weight=1e308)
    assert str(caught.value) == "special_token_weight=1e+308 must be <= 1e+06"
    assert caught.value.for_cli() == "--special-token-weight=1e+308 must be <= 1e+06"
    assert ProjClustConfig(special_token_weight=1e6).special_token_weight == 1e6


def test_from_dict_refuses_what_is_not_a_dict():
    with pytest.raises(TypeError, match=r"config=\['n_clusters'\] must be a ProjClustConfig or a dict"):
        ProjClustConfig.from_dict(["n_clusters"])


@pytest.mark.parametrize(("kwargs", "dim", "python", "flags"), [
    ({"quantize": "int4"}, 16, "int4 factors take ranks in multiples of block_size=32, and the table's dim=16 "
     "leaves none below it; give quantize 'none'", "--block-size=32"),
    ({"quantize": "int8", "block_size": 64}, 64, "give a block_size below 64, or quantize 'none'", "--block-size"),
    ({"quantize": "int8", "compression": 0.9}, 64, "lower compression or n_clusters, or quantize 'int4'",
     "lower --compression or --clusters, or --quantize 'int4'"),
    ({"quantize": "int4", "compression": 0.9}, 64, "(that needs 22,480 bytes); lower compression or n_clusters",
     "with --clusters=5 and --quantize='int4'"),
], ids=["block-over-dim", "block-equals-dim", "int8-budget", "int4-budget"])
def test_no_room_advice_matches_the_cause(kwargs, dim, python, flags):
    """Issue 16, 6: no "lower compression" when the block exceeds d, no "or quantize" when U is int4 already."""
    from projclust_onnx.common.errors import SettingError

    with pytest.raises(SettingError) as caught:
        ProjClustConfig(**kwargs).rank_for(100, dim)
    assert python in str(caught.value) and flags in caught.value.for_cli()
    assert "n_clusters" not in caught.value.for_cli()
    if dim < 100 and kwargs.get("compression") is None:
        assert "lower" not in str(caught.value)  # the budget is not the cause
    if kwargs["quantize"] == "int4" and dim == 64:
        assert str(caught.value).endswith("lower compression or n_clusters")
