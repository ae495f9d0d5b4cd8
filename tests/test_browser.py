"""The compressed MiniLM (float factors, int4 factors) in headless Chromium with onnxruntime-web's WASM backend
matches ONNX Runtime's CPU outputs. Skips when chromium or onnxruntime-web is missing (.ci/run installs both)."""

from __future__ import annotations

import numpy as np
import pytest
from browser_harness import missing, run_in_browser

from projclust_onnx import ProjClustCompressor, ProjClustConfig

pytestmark = pytest.mark.slow

TEXTS = ["These are the best tasting gummy fruits I have ever eaten.", "Stale and overpriced, would not buy again.",
         "My dog loves these treats.", "The coffee arrived quickly and tastes fine."]
# float factors at 40% (k=5), and 4-bit U at 90% in the opset-13 form (no contrib ops needed in the browser)
SETTINGS = {"float": dict(compression=0.4, n_clusters=5),
            "int4": dict(compression=0.9, n_clusters=3, quantize="int4", lookup_form="standard")}


def cpu_outputs(path, feeds) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def test_compressed_minilm_matches_onnxruntime_cpu_in_the_browser(exported, tmp_path):
    if missing():
        pytest.skip(missing())
    from transformers import AutoTokenizer

    source = exported["feature-extraction"]
    models = {}
    for name, settings in SETTINGS.items():
        ProjClustCompressor.from_pretrained(source).compress(tmp_path / name, ProjClustConfig(n_init=1, **settings))
        models[name] = tmp_path / name / "model.onnx"
    batch = AutoTokenizer.from_pretrained(source)(TEXTS, padding="max_length", max_length=32, truncation=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    feeds = {"input_ids": np.array(ids, np.int64), "attention_mask": np.array(mask, np.int64),
             "token_type_ids": np.zeros((len(ids), 32), np.int64)}
    result = run_in_browser(models, ids, mask)
    assert "error" not in result, result.get("error")
    for name, path in models.items():
        wasm = result["models"][name]["wasm"]
        assert "error" not in wasm, f"{name}: {wasm.get('error')}"
        got = np.array(wasm["output"], np.float32).reshape(wasm["dims"])
        assert np.max(np.abs(got - cpu_outputs(path, feeds))) < 1e-3, name
        print(f"{name}: wasm load {wasm['load_ms']:.0f} ms, run {wasm['latency_ms']:.1f} ms; "
              f"webgpu ({result['webgpu']}): {result['models'][name].get('webgpu', {}).get('error', 'ran')}")
