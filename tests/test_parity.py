"""pipeline/parity.py: which nodes quantize activations (the check then compares outputs by cosine)."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from projclust_onnx.pipeline.parity import quantized_activations


def one_node_model(op_type: str, domain: str = "", **attrs) -> ir.Model:
    node = helper.make_node(op_type, ["x", "w"], ["y"], name="n", domain=domain, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                            helper.make_tensor_value_info("w", TensorProto.UINT8, [4, 1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets))


@pytest.mark.parametrize(("attrs", "quantizes"), [({"accuracy_level": 4}, True), ({"accuracy_level": 0}, False),
                                                  ({}, False)], ids=["level 4", "level 0", "unset"])
def test_matmulnbits_quantizes_activations_at_accuracy_level_4_only(attrs, quantizes):
    """Issue 31: MatMulNBits with accuracy_level=4 quantizes activations on CPU, and failed the check by 0.0085."""
    model = one_node_model("MatMulNBits", "com.microsoft", K=4, N=4, bits=4, block_size=16, **attrs)
    assert bool(quantized_activations(model)) == quantizes


@pytest.mark.parametrize("op_type", ["DynamicQuantizeLinear", "MatMulIntegerToFloat", "QGemm"])
def test_the_other_activation_quantizers_are_known(op_type):
    assert quantized_activations(one_node_model(op_type, "com.microsoft" if op_type != "DynamicQuantizeLinear"
                                                else ""))


# Issue 31 item 5: the check's inputs come from the model, not from fixed numbers.

def _text_and_image_model(n: int = 40, d: int = 8, flat_image: int | None = None, window: int | None = None):
    """input_ids -> Gather(table) [-> Reshape into windows of `window` tokens and back] -> hidden; and
    pixel_values (batch, num_channels, height, width) -> Conv with 3 input channels (or, with flat_image,
    Reshape to (batch, flat_image) -> MatMul: only that many values an image) -> image_features."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((n, d)).astype(np.float32), "word_embeddings")]
    nodes = [helper.make_node("Gather", ["word_embeddings", "input_ids"], ["words"], name="lookup")]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])]
    words = "words"
    if window:
        inits += [numpy_helper.from_array(np.array([0, -1, window, d], np.int64), "windows"),
                  numpy_helper.from_array(np.array([0, -1, d], np.int64), "tokens")]
        nodes += [helper.make_node("Reshape", ["words", "windows"], ["windowed"], name="to_windows"),
                  helper.make_node("Reshape", ["windowed", "tokens"], ["unwindowed"], name="from_windows")]
        words = "unwindowed"
    nodes.append(helper.make_node("Relu", [words], ["hidden"], name="act"))
    outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", d])]
    if flat_image is not None or window is None:
        inputs.append(helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT,
                                                    ["batch", "num_channels", "height", "width"]))
        if flat_image is None:
            inits.append(numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "kernel"))
            nodes.append(helper.make_node("Conv", ["pixel_values", "kernel"], ["image_features"], name="conv"))
        else:
            inits += [numpy_helper.from_array(np.array([0, flat_image], np.int64), "flat"),
                      numpy_helper.from_array(rng.standard_normal((flat_image, 4)).astype(np.float32), "project")]
            nodes += [helper.make_node("Reshape", ["pixel_values", "flat"], ["flat_image"], name="flatten"),
                      helper.make_node("MatMul", ["flat_image", "project"], ["image_features"], name="project")]
        shape = ["batch", 2, "rows", "columns"] if flat_image is None else ["batch", 4]
        outputs.append(helper.make_tensor_value_info("image_features", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _model_dir(tmp_path, model, config: dict):
    import json

    import onnx

    directory = tmp_path / "model"
    directory.mkdir()
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_an_image_input_is_fed_the_channels_and_size_its_config_states(tmp_path):
    from projclust_onnx import ProjClustCompressor, ProjClustConfig

    source = _model_dir(tmp_path, _text_and_image_model(), {"model_type": "clip", "vision_config": {
        "image_size": 12, "num_channels": 3}})
    report = ProjClustCompressor.from_pretrained(source).compress(tmp_path / "out", ProjClustConfig(
        compression=0.5, n_clusters=2, calibration_prior="none"), verbose=False)
    assert report.parity_max_abs_diff <= report.parity_tolerance


def test_an_image_input_the_check_cannot_feed_is_refused_before_the_fit(tmp_path, monkeypatch):
    from projclust_onnx import ProjClustCompressor, ProjClustConfig, ProjectiveClustering
    from projclust_onnx.pipeline.parity import ParityError

    # the model takes 3 x 8 x 8 images only; its config says 16 x 16
    source = _model_dir(tmp_path, _text_and_image_model(flat_image=3 * 8 * 8),
                        {"model_type": "clip", "vision_config": {"image_size": 16}})
    monkeypatch.setattr(ProjectiveClustering, "fit", lambda *a, **k: pytest.fail("fitted before the refusal"))
    with pytest.raises(ParityError, match="before any fit.*image_size"):
        ProjClustCompressor.from_pretrained(source).compress(tmp_path / "out", ProjClustConfig(compression=0.5),
                                                             verbose=False)
    assert not (tmp_path / "out").exists()


def test_a_windowed_model_is_checked_at_the_lengths_it_accepts(tmp_path):
    from projclust_onnx import ProjClustCompressor, ProjClustConfig
    from projclust_onnx.pipeline.parity import ParityError

    source = _model_dir(tmp_path, _text_and_image_model(window=4), {"model_type": "longformer"})
    compressor = ProjClustCompressor.from_pretrained(source)
    with pytest.raises(ParityError, match="check_lengths"):  # 1 and 17 tokens are no whole windows
        compressor.compress(tmp_path / "out", ProjClustConfig(compression=0.5, n_clusters=2), verbose=False)
    report = compressor.compress(tmp_path / "out", ProjClustConfig(compression=0.5, n_clusters=2,
                                                                   check_lengths=[4, 8, 16]), verbose=False)
    assert report.parity_max_abs_diff <= report.parity_tolerance


def test_check_lengths_are_checked():
    from projclust_onnx import ProjClustConfig
    from projclust_onnx.common.errors import SettingError, SettingTypeError
    from projclust_onnx.pipeline.parity import check_shapes

    assert ProjClustConfig(check_lengths=[64, 128]).check_lengths == [64, 128]
    with pytest.raises(SettingTypeError, match="check_lengths"):
        ProjClustConfig(check_lengths=64)
    with pytest.raises(SettingError, match="check_lengths"):
        ProjClustConfig(check_lengths=[0])
    assert check_shapes(None, [64, 128, 256, 512]) == ((1, 64, 3), (2, 128, 0), (3, 256, 5), (1, 512, 3))
    assert check_shapes(100, [64, 128]) == ((1, 64, 3), (2, 100, 0))
