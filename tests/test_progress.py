"""Logs a file can hold (issue 27): off a terminal, each phase says when it starts and when it ends, with its
counts and seconds, and no progress bar draws."""

from __future__ import annotations

import re

from cli_run import in_process
from tiny_models import embedding_model, write_model_dir

from projclust_onnx.common import progress


def test_a_quiet_bar_reports_its_count_in_the_phase_end_line(capsys, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    phases = progress.Phases(verbose=True)
    with phases("fit", "fitting"):
        with progress.bar(True, "k-means", 10) as tick:
            for _ in range(7):
                tick(loss=1.0)
        for _ in progress.new_bar(range(3), desc="batches", unit="batch"):
            pass
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "projclust-onnx: fitting ..."
    assert re.fullmatch(r"projclust-onnx: fitting: done \(k-means: 7 steps, batches: 3 batches; \d+\.\d s\)", err[1])
    assert len(err) == 2 and "fit" in phases.timings


def test_on_a_terminal_no_end_line_is_added(capsys, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    with progress.Phases(verbose=True)("load", "reading"):
        pass
    assert capsys.readouterr().err.splitlines() == ["projclust-onnx: reading ..."]


def test_compress_with_stderr_a_file_writes_one_start_and_one_end_line_per_phase(tmp_path, capsys):
    model_dir = write_model_dir(tmp_path / "tiny", embedding_model(300, 16)[0]).parent
    done = in_process(capsys, "compress", "-m", model_dir, "-o", tmp_path / "out", "--method", "codebook",
                      "--target-ratio", "4")  # stderr captured: not a terminal
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("projclust-onnx: ")]
    starts = [ln[len("projclust-onnx: "):-len(" ...")] for ln in lines if ln.endswith(" ...")]
    ends = [re.sub(r": done \(.*\)$", "", ln[len("projclust-onnx: "):]) for ln in lines if ": done (" in ln]
    assert starts and starts == ends, done.stderr
    assert any("k-means" in ln for ln in lines if ": done (" in ln), done.stderr
