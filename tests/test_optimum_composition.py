"""Composition with Optimum's ORTOptimizer, in both orders, on the real MiniLM."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.model_files import resolve_onnx_file

pytestmark = pytest.mark.slow
FAST = ProjClustConfig(compression=0.4, n_clusters=5, n_init=2, anneal_steps=2, max_iter=10)


def optimize(src, dest, level: str):
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    ORTOptimizer.from_pretrained(src).optimize(save_dir=dest, optimization_config=getattr(AutoOptimizationConfig,
                                                                                          level)())
    return dest


def hidden(directory, ids):
    session = ort.InferenceSession(str(resolve_onnx_file(directory)), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0].astype(np.float32)


IDS = np.array([[101, 2023, 2003, 1037, 3231, 1997, 30521, 102], [101, 0, 7592, 2088, 102, 0, 0, 0]])


def test_compress_then_optimize_o2(exported, tmp_path):
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    compressed = tmp_path / "pc"
    ProjClustCompressor.from_pretrained(exported["feature-extraction"]).compress(compressed, FAST)
    optimized = optimize(compressed, tmp_path / "pc-o2", "O2")
    ops = {n.op_type for n in onnx.load(str(resolve_onnx_file(optimized))).graph.node}
    assert {"Attention", "SkipLayerNormalization", "ScatterND"} <= ops  # ORT's fusions ran, our subgraph stayed
    np.testing.assert_allclose(hidden(optimized, IDS), hidden(compressed, IDS), atol=1e-3)
    model = ORTModelForFeatureExtraction.from_pretrained(optimized, file_name=resolve_onnx_file(optimized).name)
    assert model(input_ids=IDS, attention_mask=np.ones_like(IDS), token_type_ids=np.zeros_like(IDS)) is not None


@pytest.mark.parametrize(("level", "dtype", "tolerance"), [("O2", "float32", 1e-4), ("O4", "float16", 2e-2)])
def test_optimize_then_compress(exported, tmp_path, level, dtype, tolerance):
    optimized = optimize(exported["feature-extraction"], tmp_path / level, level)
    out = tmp_path / f"{level}-pc"
    report = ProjClustCompressor.from_pretrained(optimized).compress(out, FAST)
    assert report.dtype == dtype and report.parity_max_abs_diff <= tolerance == report.parity_tolerance
    inits = {t.name: t for t in onnx.load(str(resolve_onnx_file(out))).graph.initializer}
    assert onnx.helper.tensor_dtype_to_np_dtype(inits["projclust/U"].data_type) == np.dtype(dtype)
    assert (30522, 384) not in [tuple(t.dims) for t in inits.values()]
    close = np.abs(hidden(out, IDS) - hidden(optimized, IDS)).mean()
    assert close < 0.1  # compressed, not broken: same model up to the embedding approximation
