"""ProjClustCompressor.inspect (pipeline/inspection.py): what compress would find and spend, in Python; the CLI's
`inspect` prints exactly its rows."""

from __future__ import annotations

from cli_run import cli
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.cli.main import format_table


def test_inspect_in_python_is_what_the_cli_prints(tmp_path):
    model_dir = write_model_dir(tmp_path / "tiny", embedding_model(60, 8, tied=True)[0]).parent
    found = ProjClustCompressor.from_pretrained(model_dir).inspect(ProjClustConfig(compression=0.5, n_clusters=2))
    rows = dict(found.rows)
    assert rows["word embedding"].endswith("(60 x 8, float32, stored float)")
    assert rows["tied LM head"].startswith("MatMul") and "rewritten with the same factors" in rows["tied LM head"]
    assert "k=2" in rows["settings"] and "U float32" in rows["settings"]
    done = cli("inspect", "--model", model_dir, "--compression", "0.5", "--clusters", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == format_table("projclust-onnx inspect", found.rows)


def test_inspect_writes_nothing_and_fits_nothing(tmp_path, monkeypatch):
    from projclust_onnx import ProjectiveClustering

    model_dir = write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent
    before = sorted(p.name for p in tmp_path.rglob("*"))
    monkeypatch.setattr(ProjectiveClustering, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("fit")))
    found = ProjClustCompressor.from_pretrained(model_dir).inspect({"method": "codebook", "compression": 0.8})
    assert "codebooks" in dict(found.rows)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
