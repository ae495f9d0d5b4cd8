"""sentence-transformers and transformers.js folders: the same layout in and out, every file of onnx/
compressed within its own storage, and the output loaded by SentenceTransformer(backend="onnx")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.output_dir import MANIFEST_NAME

TINY = dict(compression=0.4, n_clusters=3, block_size=16, n_init=1, anneal_steps=2)
SENTENCES = ["the cat sat on the mat", "a dog barked at the mailman all day", "soup"]


def sentence_transformers_folder(tmp: Path, minilm_path: Path) -> Path:
    """A tiny sentence-transformers model saved with backend="onnx", plus its dynamic int8 variant."""
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model, models
    from tiny_checkpoints import VOCAB, build_checkpoint, tiny_tokenizer

    from projclust_onnx.pipeline.compressor import quiet_third_party

    hf = build_checkpoint("bert", tmp / "hf")
    tiny_tokenizer(hf, minilm_path / "vocab.txt", VOCAB)
    with quiet_third_party():
        transformer = models.Transformer(str(hf))
        st = SentenceTransformer(modules=[transformer, models.Pooling(64, "mean"), models.Normalize()], device="cpu")
        st.save_pretrained(str(tmp / "st-torch"))
        onnx_st = SentenceTransformer(str(tmp / "st-torch"), backend="onnx", device="cpu")
        onnx_st.save_pretrained(str(tmp / "st"))
        export_dynamic_quantized_onnx_model(onnx_st, "avx512_vnni", str(tmp / "st"))
    return tmp / "st"


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory, minilm_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (the test extra) is not installed")
    return sentence_transformers_folder(tmp_path_factory.mktemp("layout"), minilm_path)


def test_sentence_transformers_folder_in_and_out(st_folder, tmp_path):
    from sentence_transformers import SentenceTransformer

    report = ProjClustCompressor.from_pretrained(st_folder).compress(tmp_path / "out", ProjClustConfig(**TINY))
    out = tmp_path / "out"
    inputs = sorted(p.relative_to(st_folder).as_posix() for p in st_folder.rglob("*") if p.is_file())
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert set(inputs) <= set(written)  # modules.json, 1_Pooling/, tokenizer, config, onnx/ all kept
    manifest = json.loads((out / MANIFEST_NAME).read_text())["files"]
    assert "onnx/model.onnx" in manifest and "onnx/model_qint8_avx512_vnni.onnx" in manifest
    files = {f["file"]: f for f in report.files}
    assert set(files) == {"onnx/model.onnx", "onnx/model_qint8_avx512_vnni.onnx"}
    for name in files:
        assert (out / name).stat().st_size < (st_folder / name).stat().st_size, name
    int8 = files["onnx/model_qint8_avx512_vnni.onnx"]
    assert int8["storage_before"].startswith("int8") and int8["quantize"] == "int8"
    assert int8["embedding_bytes_after"] <= 0.6 * int8["embedding_bytes_before"]  # within its own int8 bytes
    assert int8["parity_min_cosine"] is not None  # the quantized graph was compared by cosine
    assert files["onnx/model.onnx"]["quantize"] == "none" and report.special_tokens > 0  # tokenizer at the top

    original = SentenceTransformer(str(st_folder), backend="onnx", device="cpu")
    for kwargs in ({}, {"model_kwargs": {"file_name": "onnx/model_qint8_avx512_vnni.onnx"}}):
        compressed = SentenceTransformer(str(out), backend="onnx", device="cpu", **kwargs)
        assert [type(m).__name__ for m in compressed] == ["Transformer", "Pooling", "Normalize"]
        got = compressed.encode(SENTENCES)
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        want = original.encode(SENTENCES)
        assert np.min(np.sum(got * want, axis=1)) > 0.5  # a random tiny model at 40%: same direction


def test_onnx_subfolder_means_the_whole_layout(st_folder, tmp_path):
    compressor = ProjClustCompressor.from_pretrained(st_folder / "onnx", file_name="model.onnx")
    assert compressor.source_dir == st_folder
    assert compressor.relative(compressor.onnx_path) == "onnx/model.onnx"


@pytest.mark.slow  # the layout itself runs fast above; this adds quantize_dynamic's uint8 variant
def test_transformers_js_folder_keeps_its_layout(st_folder, tmp_path):
    """onnx/model.onnx and onnx/model_quantized.onnx (quantize_dynamic, uint8 weights), config and tokenizer on top."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    js = tmp_path / "js"
    (js / "onnx").mkdir(parents=True)
    for item in st_folder.iterdir():
        if item.is_file() and item.name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                                            "special_tokens_map.json", "vocab.txt"):
            shutil.copy(item, js / item.name)
    shutil.copy(st_folder / "onnx" / "model.onnx", js / "onnx" / "model.onnx")
    quantize_dynamic(js / "onnx" / "model.onnx", js / "onnx" / "model_quantized.onnx", weight_type=QuantType.QUInt8)
    report = ProjClustCompressor.from_pretrained(js).compress(tmp_path / "out", ProjClustConfig(**TINY))
    assert {f["file"] for f in report.files} == {"onnx/model.onnx", "onnx/model_quantized.onnx"}
    for name in ("onnx/model.onnx", "onnx/model_quantized.onnx"):
        assert (tmp_path / "out" / name).stat().st_size < (js / name).stat().st_size
    assert (tmp_path / "out" / "tokenizer.json").is_file() and not any((tmp_path / "out").glob("*.onnx"))


def test_hugging_face_folder_of_a_sentence_transformer_keeps_its_modules(st_folder, tmp_path):
    """Compressing the PyTorch folder (exported first) keeps modules.json and the pooling, so the output
    encodes with the same modules, normalisation included; weights are not copied."""
    from sentence_transformers import SentenceTransformer

    hf = st_folder.parent / "st-torch"
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(hf).compress(out, ProjClustConfig(**TINY))
    assert (out / "modules.json").is_file() and (out / "model.onnx").is_file()
    assert not [p for p in out.rglob("*") if p.suffix in (".safetensors", ".bin")]
    compressed = SentenceTransformer(str(out), backend="onnx", device="cpu")
    assert [type(m).__name__ for m in compressed] == ["Transformer", "Pooling", "Normalize"]
    assert np.allclose(np.linalg.norm(compressed.encode(SENTENCES), axis=1), 1, atol=1e-5)
