"""The benchmark harness: statistics, metrics, data loading and the report schema on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from cli_run import assert_nothing_written, in_process, one_line_error
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.benchmark.runner import load_labeled_data, run_benchmark
from projclust_onnx.benchmark.stats import latency_stats
from projclust_onnx.common.metrics import (
    accuracy,
    f1,
    glue_task,
    matthews_correlation,
    pearson,
    score,
    spearman,
)


def test_latency_statistics_from_given_timings():
    stats = latency_stats([0.010, 0.020, 0.030, 0.040, 0.100], batch_size=4)
    assert stats["p50_ms"] == pytest.approx(30.0)
    assert stats["p90_ms"] == pytest.approx(40 + 0.6 * 60)  # linear between the 4th and 5th order statistics
    assert stats["p99_ms"] == pytest.approx(40 + 0.96 * 60)
    assert stats["mean_ms"] == pytest.approx(40.0)
    assert stats["throughput_seq_per_s"] == pytest.approx(4 / 0.030)
    assert stats["runs"] == 5
    with pytest.raises(ValueError, match="no timings"):
        latency_stats([], 1)


def test_classification_metrics_against_hand_computed_values():
    labels = [1, 0, 1, 1, 0, 0]
    preds = [1, 0, 0, 1, 1, 0]  # tp=2 tn=2 fp=1 fn=1
    assert accuracy(labels, preds) == pytest.approx(4 / 6)
    assert f1(labels, preds) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert matthews_correlation(labels, preds) == pytest.approx((2 * 2 - 1 * 1) / np.sqrt(3 * 3 * 3 * 3))
    assert matthews_correlation([1, 1], [1, 1]) == 0.0  # undefined: reported as 0 as GLUE does


def test_regression_metrics_against_hand_computed_values():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Ranks of [1, 2, 2, 4] are [0, 1.5, 1.5, 3]; of [10, 30, 20, 40] are [0, 2, 1, 3].
    a, b = np.array([0, 1.5, 1.5, 3]), np.array([0, 2, 1, 3])
    assert spearman([1, 2, 2, 4], [10, 30, 20, 40]) == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_score_uses_argmax_or_the_regression_column():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    expected = {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}
    assert score(("accuracy", "f1"), [1, 0, 0], logits) == expected
    assert score(("pearson",), [1.0, 2.0, 3.0], np.array([[1.0], [2.0], [3.5]]))["pearson"] > 0.99


def test_glue_tasks_and_unknown_task():
    assert glue_task("cola")[1] == ("matthews_correlation",)
    assert glue_task("stsb")[1] == ("pearson", "spearman")
    assert glue_task("mrpc")[0] == ("sentence1", "sentence2")
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'"):
        glue_task("sst3")


def args_for(**kw):
    base = dict(glue_task=None, data_files=None, split=None, text_column=None, label_column="label", max_samples=None)
    return SimpleNamespace(**{**base, **kw})


def test_labeled_csv_and_json_and_their_errors(tmp_path):
    (tmp_path / "d.csv").write_text('review,stars\n"good",1\n"bad",0\n"fine",1\n')
    (tmp_path / "p.json").write_text('[{"a": "x", "b": "y", "label": 1}]')
    data = load_labeled_data(args_for(data_files=[str(tmp_path / "d.csv")], text_column=["review"],
                                      label_column="stars", max_samples=2))
    assert data.texts == [("good",), ("bad",)] and data.labels == [1, 0]
    pairs = load_labeled_data(args_for(data_files=[str(tmp_path / "p.json")], text_column=["a", "b"]))
    assert pairs.texts == [("x", "y")]
    with pytest.raises(ValueError, match="column 'label' not found"):
        load_labeled_data(args_for(data_files=[str(tmp_path / "d.csv")], text_column=["review"]))
    with pytest.raises(ValueError, match="needs --text-column"):
        load_labeled_data(args_for(data_files=[str(tmp_path / "d.csv")]))
    with pytest.raises(ValueError, match="unknown GLUE task"):
        load_labeled_data(args_for(glue_task="nope"))


@pytest.fixture
def two_models(tmp_path):
    original = write_model_dir(tmp_path / "original", embedding_model(60, 8)[0]).parent
    ProjClustCompressor.from_pretrained(original).compress(tmp_path / "pc", ProjClustConfig(n_clusters=2, rank=3,
                                                                                           n_init=2))
    return original, tmp_path / "pc"


def test_report_schema_on_a_tiny_model(two_models, tmp_path):
    original, compressed = two_models
    out = tmp_path / "bench"
    report = run_benchmark([("original", original), ("pc", compressed)], out, batch_sizes=[1, 2],
                           sequence_lengths=[4, 8], warmup=1, repeats=3, progress=False)
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["schema_version"] == 2 and saved["provider"] == "CPUExecutionProvider"
    from projclust_onnx.common.threads import available_cpus

    assert saved["grid"] == {"batch_sizes": [1, 2], "sequence_lengths": [4, 8], "warmup": 1, "repeats": 3,
                             "threads": available_cpus()}
    for model in saved["models"].values():
        assert set(model["latency"]) == {"b1_s4", "b1_s8", "b2_s4", "b2_s8"}
        for point in model["latency"].values():
            assert point["runs"] == 3 and 0 < point["p50_ms"] <= point["p90_ms"] <= point["p99_ms"]
            assert 0 < point["min_ms"] <= point["p50_ms"] and point["iqr_ms"] >= 0 and point["std_ms"] >= 0
        assert model["file_bytes"] > 0 and model["parameters"] > 0
        assert model["memory"]["kind"] == "cpu_rss" and model["memory"]["peak_mb"] >= 0
        assert model["accuracy"] is None and model["fidelity_cosine"] is None
    assert saved["models"]["original"]["latency_ratio"]["b2_s8"] == 1.0
    assert saved["models"]["original"]["embedding_parameters"] == 60 * 8
    assert saved["models"]["pc"]["embedding_parameters"] == 60 * 3 + 2 * 3 * 8
    assert saved["models"]["pc"]["compression"]["n_clusters"] == 2
    assert saved["models"]["pc"]["compression"]["rank"] == 3
    md = (out / "report.md").read_text()
    assert md.count("| pc |") == 6  # settings row, size row, four latency rows
    assert "1 warmup and 3 timed runs" in md and "| IQR ms |" in md
    assert "| pc | projclust, k=2, j=3, rank given, layout=grouped, calibration: none" in md
    assert "| original | as given" in md
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"


def test_benchmark_command_line(two_models, tmp_path):
    original, compressed = two_models
    done = subprocess.run([sys.executable, "-m", "projclust_onnx.cli", "benchmark", str(original), f"pc={compressed}",
                           "--batch-sizes", "1", "--sequence-lengths", "4", "--repeats", "2", "--warmup", "1",
                           "--no-memory", "--no-plots", "-q", "-o", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| original | 1 | 4 |" in done.stdout and "| pc | 1 | 4 |" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "projclust_onnx.cli", "benchmark", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_glue_task_goes_through_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        first, second = glue_task(config)[0]
        return datasets.Dataset.from_dict({first: ["a", "b"], second: ["c", "d"], "label": [1, 0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_labeled_data(args_for(glue_task="mrpc"))
    assert calls == [("glue", "mrpc", "validation")]
    assert data.texts == [("a", "c"), ("b", "d")] and data.metrics == ("accuracy", "f1")
    assert data.source == "glue/mrpc/validation"
    load_labeled_data(args_for(glue_task="mnli"))
    assert calls[-1] == ("glue", "mnli", "validation_matched")


def test_accuracy_plot_is_a_png(tmp_path):
    from projclust_onnx.benchmark.plots import plot_accuracy

    rows = [{"method": f"{m} ({w})", "compression": c, "accuracy": 0.8 + c / 10}
            for m in ("svd k=1", "projclust k=5") for w in ("none", "train") for c in (0.2, 0.4)]
    path = plot_accuracy(rows, baseline=0.85, path=tmp_path / "acc.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


@pytest.mark.slow  # about 10 s: kept out of the 5-minute suite, run by CI
def test_fidelity_from_a_text_file_without_labels(two_models, tmp_path):
    """Issue 9: fidelity needs no labeled data; a rerun does not overwrite the previous report."""
    original, compressed = two_models
    texts = tmp_path / "sentences.txt"
    texts.write_text("the tea was lovely\n\nterrible packaging\nfine\n")
    (original / "tokenizer.json").write_text(_word_level_tokenizer())
    out = tmp_path / "bench"
    args = [sys.executable, "-m", "projclust_onnx.cli", "benchmark", str(original), f"pc={compressed}",
            "--batch-sizes", "1", "--sequence-lengths", "4", "--repeats", "2", "--warmup", "1", "--no-memory",
            "--no-plots", "-q", "-o", str(out), "--fidelity-text", str(texts)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "report.json").read_text())
    assert saved["models"]["original"]["fidelity_cosine"] == pytest.approx(1.0)
    assert 0.0 < saved["models"]["pc"]["fidelity_cosine"] < 1.0
    assert saved["fidelity_source"] == str(texts)
    first = (out / "report.json").read_bytes()
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    assert (out / "report.json").read_bytes() == first
    assert subprocess.run(args + ["--overwrite"], capture_output=True, text=True, timeout=300).returncode == 0


def _word_level_tokenizer() -> str:
    """A tokenizers JSON for the tiny 60-row models: lowercase words, unknown words -> id 1."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = "the tea was lovely terrible packaging fine".split()
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}},
                                     unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok.to_str()


def test_latency_plot_has_every_sequence_length_and_ratios(two_models, tmp_path):
    from projclust_onnx.benchmark.plots import plot_latency

    original, compressed = two_models
    report = run_benchmark([("original", original), ("pc", compressed)], tmp_path / "b", batch_sizes=[1, 2],
                           sequence_lengths=[4, 8, 16], warmup=1, repeats=2, memory=False, plots=False,
                           progress=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    real_savefig = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: saved.append(fig) or real_savefig(fig, *a, **k)
    try:
        plot_latency(report, tmp_path / "lat.png")
    finally:
        plt.Figure.savefig = real_savefig
    axes = saved[0].axes
    assert [ax.get_title() for ax in axes[:3]] == ["sequence 4", "sequence 8", "sequence 16"]
    assert all(ax.get_ylabel() == "p50 / original's" for ax in axes[3:])
    assert all(len(ax.get_lines()) >= 2 for ax in axes)


# ---------------------------------------------------------------------- refusals before any session
@pytest.fixture
def comparable_models(tmp_path, monkeypatch):
    """An original and a copy whose config.json declare 60 tokens and 128 positions; opening a session fails the
    test (every refusal here comes first)."""
    import projclust_onnx.benchmark.runner as runner

    def no_session(*args, **kwargs):
        raise AssertionError("an ONNX Runtime session was opened before the refusal")

    monkeypatch.setattr(runner, "open_session", no_session)
    dirs = []
    for name in ("original", "copy"):
        directory = write_model_dir(tmp_path / name, embedding_model(60, 8)[0]).parent
        (directory / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 60,
                                                           "max_position_embeddings": 128}))
        dirs.append(directory)
    return dirs


@pytest.mark.parametrize(("flags", "named"), [
    (["--batch-sizes", "0"], "--batch-sizes=0"),
    (["--repeats", "0"], "--repeats=0"),
    (["--warmup", "-1"], "--warmup=-1"),
    (["--threads", "-1"], "--threads=-1"),
    (["--max-length", "0"], "--max-length=0"),
    (["--max-samples", "-1"], "--max-samples=-1"),
    (["--split", "bogus"], "--split"),
], ids=["batch-sizes", "repeats", "warmup", "threads", "max-length", "max-samples", "split-without-glue-task"])
def test_benchmark_flags_out_of_range_are_named(comparable_models, tmp_path, capsys, flags, named):
    out = tmp_path / "bench"
    line = one_line_error(in_process(capsys, "benchmark", *comparable_models, "--output", out, "-q", *flags))
    assert line.startswith("projclust-onnx: error: ") and named in line
    if named == "--split":
        assert "--glue-task" in line
    assert_nothing_written(out)


def test_sequence_lengths_over_the_declared_positions_are_refused(comparable_models, tmp_path, capsys):
    out = tmp_path / "bench"
    line = one_line_error(in_process(capsys, "benchmark", *comparable_models, "--output", out, "-q",
                                     "--sequence-lengths", "100000"))
    assert "--sequence-lengths" in line and "100000" in line and "128" in line
    assert_nothing_written(out)


def test_models_of_different_vocabularies_are_refused(comparable_models, tmp_path, capsys):
    original, other = comparable_models
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 61}))
    out = tmp_path / "bench"
    line = one_line_error(in_process(capsys, "benchmark", original, other, "--output", out, "-q"))
    assert "different vocabularies" in line and "60" in line and "61" in line
    assert_nothing_written(out)
    assert_nothing_written(out)
