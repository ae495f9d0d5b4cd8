"""pipeline/model_files.py: what of a model folder the output repeats."""

from __future__ import annotations

import onnx
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.model_files import companion_files


def test_external_data_is_no_companion_and_an_unused_data_file_is_left_out(tmp_path):
    """Issue 31: an unused `model.onnx.data` was copied along and listed in the manifest (the output grew past
    the input); the data a model reads is written with the model, never copied as a companion."""
    model_dir = write_model_dir(tmp_path / "m", embedding_model(300, 16)[0], external=True).parent
    proto = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    used = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert used
    (model_dir / "model.onnx.data").write_bytes(b"\0" * 4096)  # left by another export, read by nothing
    (model_dir / "vocab.txt").write_text("[PAD]\n")
    listed = {rel for _, rel in companion_files(model_dir, skip=set())}
    assert "vocab.txt" in listed and "model.onnx.data" not in listed and not listed & used
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(n_clusters=2, rank=3, n_init=1))
    assert not (out / "model.onnx.data").exists() and (out / "vocab.txt").is_file()
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < \
        sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
