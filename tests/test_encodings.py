"""Issue 28: a new encoding is one module plus one registry line. tests/toy_encoding.py's RowInt8 is added to
storage.registry.FORMATS, and compress writes, checks and reports a model with it, inspect lists it, the CLI
offers it and the chooser tries it: no module of the package is changed for it."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from cli_run import in_process
from onnx import numpy_helper
from tiny_models import embedding_model, write_model_dir
from toy_encoding import RowCodes, RowInt8

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.storage import registry


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(registry, "FORMATS", (*registry.FORMATS, RowInt8))  # the one registry line
    return RowInt8


def run(path, ids):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: ids if i.name == "input_ids" else np.zeros_like(ids) for i in session.get_inputs()}
    return session.run(None, feeds)[0]


def test_a_registered_toy_encoding_is_compressed_checked_and_reported(tmp_path, toy):
    model, table = embedding_model(40, 8, seed=3)
    source = write_model_dir(tmp_path / "tiny", model).parent
    compressor = ProjClustCompressor.from_pretrained(source)
    config = ProjClustConfig(method="rowint8", compression=0.5)
    rows = dict(compressor.inspect(config).rows)
    assert rows["rowint8 storages"].startswith(f"within {0.5 * table.nbytes:,.0f} bytes: rowint8 = "
                                               f"{40 * 8 + 4 * 40:,} bytes")

    report = compressor.compress(tmp_path / "out", config, verbose=False)
    assert (report.method, report.quantize, report.storage, report.n_clusters) == ("quantize", "rowint8", "rowint8",
                                                                                   None)
    assert report.embedding_bytes_after == 40 * 8 + 4 * 40 + 8  # codes, scales, the Unsqueeze's axes: as written
    saved = json.loads((tmp_path / "out" / "projclust_report.json").read_text())
    assert saved["quantize"] == "rowint8" and saved["files"][0]["quantize"] == "rowint8"
    assert dict(report.summary_rows())["method"] == "plain quantization, rowint8 (rowint8)"

    stored = RowInt8().encode(table)  # the written model computes the toy's decode of the table
    ids = np.array([[0, 5, 39, 7], [1, 2, 3, 4]], np.int64)
    original = tmp_path / "tiny" / "model.onnx"
    dense_model, _ = embedding_model(40, 8, seed=3)
    dense_model.graph.initializer[0].CopyFrom(numpy_helper.from_array(RowInt8.decode(stored),
                                                                      dense_model.graph.initializer[0].name))
    write_model_dir(tmp_path / "decoded", dense_model)
    np.testing.assert_allclose(run(tmp_path / "out" / "model.onnx", ids), run(tmp_path / "decoded" / "model.onnx", ids),
                               rtol=1e-6, atol=1e-6)
    assert not np.allclose(run(original, ids), run(tmp_path / "out" / "model.onnx", ids), atol=0)  # it was encoded
    assert isinstance(stored, RowCodes) and registry.format_of(stored) == RowInt8()


def test_the_cli_offers_the_toy_and_the_chooser_tries_it(tmp_path, toy, capsys):
    source = write_model_dir(tmp_path / "tiny", embedding_model(40, 8, seed=1)[0]).parent
    done = in_process(capsys, "compress", "--model", source, "--output", tmp_path / "out", "--method", "rowint8",
                      "--compression", "0.5", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "projclust_report.json").read_text())["quantize"] == "rowint8"
    from projclust_onnx.core.chooser import choose

    X = np.random.default_rng(0).standard_normal((4000, 64)).astype(np.float32)
    choice = choose(X, X.nbytes / 3.5, None, formats=[cls for cls in registry.FORMATS if not cls.branches])
    assert any(c.quantize == "rowint8" and c.label == "plain rowint8" for c in choice.candidates)


def test_without_the_registry_line_the_method_is_unknown(tmp_path):
    from projclust_onnx.common.errors import SettingError

    with pytest.raises(SettingError, match="rowint8"):
        ProjClustConfig(method="rowint8")
