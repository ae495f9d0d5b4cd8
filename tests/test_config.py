"""ProjClustConfig: defaults, validation and the JSON round trip."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from projclust_onnx import ProjClustConfig
from projclust_onnx.core.budget import rank_for
from projclust_onnx.pipeline.config import (
    FLAT_ORDER,
    SECTION_OF,
    SECTIONS,
    BudgetConfig,
    CalibrationConfig,
    ClusteringConfig,
    GraphConfig,
    StorageConfig,
)


def test_json_round_trip(tmp_path):
    config = ProjClustConfig(n_clusters=8, compression=0.3, layout="onehot", calibration_text=["a.txt"], seed=4)
    path = config.save_pretrained(tmp_path)
    assert path.name == "projclust_config.json"
    assert json.loads(path.read_text())["clustering"]["n_clusters"] == 8
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


# ---------------------------------------------------------------------- sections
# Every key of the flat form (version 1), most with a value other than its default.
OLD_FLAT = {"method": "projclust", "n_clusters": 3, "compression": 0.7, "rank": None, "quantize": "int8",
            "block_size": 64, "lookup_form": "standard", "target_ratio": None, "head": "keep",
            "max_initializer_bytes": 4096, "layout": "onehot", "init": "random", "n_init": 2, "anneal_steps": 0,
            "max_iter": 3, "tol": 0.0, "z": 1.5, "seed": 7, "device": "cpu", "ids_input": "ids",
            "calibration_text": ["a.txt", "b.txt"], "calibration_dataset": "glue:sst2@train",
            "calibration_column": "sentence", "calibration_smoothing": 0.5, "special_token_weight": 0.0,
            "calibration_prior": "none", "check_lengths": [64, 128]}
NESTED = {
    "budget": BudgetConfig(compression=0.7),
    "clustering": ClusteringConfig(n_clusters=3, init="random", n_init=2, anneal_steps=0, max_iter=3, tol=0.0, z=1.5,
                                   device="cpu", seed=7),
    "calibration": CalibrationConfig(calibration_text=["a.txt", "b.txt"], calibration_dataset="glue:sst2@train",
                                     calibration_column="sentence", calibration_smoothing=0.5,
                                     special_token_weight=0.0, calibration_prior="none"),
    "graph": GraphConfig(layout="onehot", lookup_form="standard", head="keep", ids_input="ids",
                         max_initializer_bytes=4096, check_lengths=[64, 128]),
    "storage": StorageConfig(quantize="int8", block_size=64),
}


def test_every_setting_lives_in_exactly_one_section():
    assert sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values()) == len(SECTION_OF) == len(OLD_FLAT)
    assert set(SECTION_OF) == set(OLD_FLAT) == set(FLAT_ORDER)


def test_flat_keywords_equal_nested_sections():
    config = ProjClustConfig(**OLD_FLAT)
    assert config == ProjClustConfig(**NESTED)
    assert config == ProjClustConfig(**{name: dataclasses.asdict(section) for name, section in NESTED.items()})
    for name, value in OLD_FLAT.items():
        assert getattr(config, name) == value == getattr(getattr(config, SECTION_OF[name]), name)


def test_nested_json_round_trip(tmp_path):
    config = ProjClustConfig(**OLD_FLAT)
    data = config.to_dict()
    assert data["format_version"] == 2 and list(data) == ["format_version", *SECTIONS]
    assert data["clustering"]["n_clusters"] == 3 and data["storage"] == {"quantize": "int8", "block_size": 64}
    path = config.save_pretrained(tmp_path, flat=False)
    assert json.loads(path.read_text()) == data
    assert ProjClustConfig.from_pretrained(tmp_path) == config
    assert ProjClustConfig.from_pretrained(path).to_dict() == data


def test_an_old_flat_file_reads_into_the_same_config(tmp_path):
    (tmp_path / "projclust_config.json").write_text(json.dumps(OLD_FLAT, indent=2) + "\n")
    config = ProjClustConfig.from_pretrained(tmp_path)
    assert config == ProjClustConfig(**NESTED)
    assert config.to_dict(flat=True) == OLD_FLAT and list(config.to_dict(flat=True)) == list(OLD_FLAT)
    (tmp_path / "out").mkdir()  # save_pretrained still writes this flat form, byte for byte
    assert config.save_pretrained(tmp_path / "out", flat=True).read_text() == \
        (tmp_path / "projclust_config.json").read_text()


def test_a_config_from_before_the_head_pass_reads_with_the_default_head():
    assert ProjClustConfig.from_dict({**OLD_FLAT, "head": None}).graph.head == "factorize"


@pytest.mark.parametrize(("section", "kwargs", "message"), [
    (BudgetConfig, {"compression": 1.2}, "compression=1.2 must lie in (0, 1), e.g. 0.4 for a 40% smaller table"),
    (BudgetConfig, {"compression": None}, "give compression (e.g. 0.4) or rank"),
    (BudgetConfig, {"target_ratio": 0.5}, "target_ratio=0.5 must be > 1, e.g. 10 for a table ten times smaller"),
    (BudgetConfig, {"target_ratio": 4, "rank": 3}, "give target_ratio or rank, not both: the chooser picks the rank"),
    (ClusteringConfig, {"method": "svd", "n_clusters": 5},
     "n_clusters=5 must be 1 with method svd, the one-cluster case; use method projclust for k > 1"),
    (ClusteringConfig, {"device": "foo"}, "device='foo' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (ClusteringConfig, {"seed": -1}, "seed=-1 must be in [0, 9223372036854775807]"),
    (CalibrationConfig, {"calibration_smoothing": -1}, "calibration_smoothing=-1 must be >= 0"),
    (CalibrationConfig, {"calibration_column": 3}, "calibration_column=3 must be a string"),
    (GraphConfig, {"layout": "dense"}, "layout='dense' must be one of ('grouped', 'onehot')"),
    (GraphConfig, {"max_initializer_bytes": 10}, "max_initializer_bytes=10 must be >= 1024"),
    (StorageConfig, {"block_size": 24},
     "block_size=24 must be a power of two >= 16 (ONNX Runtime's GatherBlockQuantized)"),
    (StorageConfig, {"quantize": "int2"}, "quantize='int2' must be one of ('none', 'int8', 'int4')"),
], ids=["compression", "no-budget", "ratio", "ratio-and-rank", "svd-k", "device", "seed", "smoothing", "column",
        "layout", "initializer-bytes", "block", "quantize"])
def test_each_section_refuses_its_own_bad_values(section, kwargs, message):
    """The messages of the flat config, raised by the section, whether it is built alone or from flat keywords."""
    from projclust_onnx.common.errors import SettingError

    for build in (section, ProjClustConfig):
        with pytest.raises(SettingError) as caught:
            build(**kwargs)
        assert str(caught.value) == message
    assert all(SECTIONS[SECTION_OF[name]] is section for name in kwargs)


def test_unknown_keywords_are_refused_naming_them():
    with pytest.raises(TypeError, match=r"unknown ProjClustConfig keywords \['clusters'\]; known keywords: "
                                        r"\['anneal_steps', .*'n_clusters'"):
        ProjClustConfig(clusters=5)
    with pytest.raises(TypeError, match=r"unknown ProjClustConfig budget keywords \['ratio'\]"):
        ProjClustConfig(budget={"ratio": 4})
    with pytest.raises(TypeError, match="budget=5 must be a BudgetConfig or a dict of its fields"):
        ProjClustConfig(budget=5)
    with pytest.raises(ValueError, match=r"unknown ProjClustConfig clustering keys \['k'\]"):
        ProjClustConfig.from_dict({"clustering": {"k": 3}})
    with pytest.raises(ValueError, match="format_version=3: this projclust-onnx reads versions 1 and 2"):
        ProjClustConfig.from_dict({"format_version": 3})


def test_replace_takes_flat_names_and_flat_names_are_read_only():
    config = ProjClustConfig(n_clusters=3, rank=4, seed=2)
    changed = dataclasses.replace(config, quantize="int8", n_clusters=1, method="svd")
    assert (changed.quantize, changed.n_clusters, changed.method) == ("int8", 1, "svd")
    assert (changed.rank, changed.seed) == (4, 2)
    assert config.clustering.n_clusters == 3 and config.storage.quantize is None  # the original is untouched
    with pytest.raises(ValueError, match="n_clusters=3 must be 1 with method svd"):
        dataclasses.replace(config, method="svd")
    with pytest.raises(AttributeError, match=r"dataclasses.replace\(config, n_clusters=...\)"):
        config.n_clusters = 4


def test_rank_for_is_the_budget_function():
    config = ProjClustConfig(n_clusters=3, compression=0.5, quantize="int4")
    assert config.rank_for(30522, 384, 2) == rank_for(30522, 384, 3, compression=0.5, param_bytes=2, quantize="int4")
    with pytest.raises(ValueError, match="needs compression or rank"):
        ProjClustConfig(target_ratio=10).rank_for(30522, 384)


def test_command_line_flags_fill_the_config():
    """Each settings flag's dest is its config setting; unset flags leave the config's defaults."""
    from projclust_onnx.cli.main import _config, build_parser

    parser = build_parser()
    assert _config(parser.parse_args(["compress"])) == ProjClustConfig()
    assert _config(parser.parse_args(["finetune"])) == ProjClustConfig()
    flags = ["--clusters", "3", "--compression", "0.7", "--method", "projclust", "--quantize", "int8", "--block-size",
             "64", "--lookup-form", "standard", "--head", "keep", "--max-initializer-bytes", "4096", "--runtime",
             "onehot", "--device", "cpu", "--seed", "7", "--calibration-text", "a.txt", "b.txt",
             "--calibration-dataset", "glue:sst2@train", "--calibration-column", "sentence",
             "--calibration-smoothing", "0.5", "--special-token-weight", "0", "--n-init", "2", "--ids-input", "ids",
             "--calibration-prior", "none", "--check-lengths", "64", "128"]
    # Every setting but those without a flag (init, anneal_steps, max_iter, tol, z: left at their defaults).
    expected = {**OLD_FLAT, "init": "kmeans", "anneal_steps": 8, "max_iter": 30, "tol": 1e-4, "z": 2.0}
    assert _config(parser.parse_args(["compress", *flags])) == ProjClustConfig(**expected)
    assert _config(parser.parse_args(["inspect", "--rank", "3"])) == ProjClustConfig(rank=3)
