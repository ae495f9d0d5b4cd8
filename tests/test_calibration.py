"""Token-frequency weights: counting with the model's tokenizer, smoothing, special tokens."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from cli_run import assert_nothing_written, in_process, one_line_error
from tiny_models import embedding_model, write_model_dir

from projclust_onnx.common.data import column, load_records
from projclust_onnx.core.calibration import count_tokens, read_lines, token_weights, with_special_tokens


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def test_counts_match_the_tokenizer(tokenizer):
    texts = ["the cat sat on the mat", "The dog."]
    counts = count_tokens(tokenizer, texts, tokenizer.vocab_size)
    the = tokenizer.convert_tokens_to_ids("the")
    assert counts[the] == 3  # uncased: "The" too
    assert counts[tokenizer.cls_token_id] == 2 and counts[tokenizer.sep_token_id] == 2
    assert counts.sum() == sum(len(tokenizer(t)["input_ids"]) for t in texts)


def test_counts_refuse_a_foreign_tokenizer(tokenizer):
    with pytest.raises(ValueError, match="use the model's own tokenizer"):
        count_tokens(tokenizer, ["hello world"], 100)


def test_smoothing_keeps_unseen_tokens():
    weights = token_weights(np.array([0, 3, 0]), smoothing=0.5)
    np.testing.assert_array_equal(weights, [0.5, 3.5, 0.5])
    with pytest.raises(ValueError, match="every weight is zero"):
        token_weights(np.zeros(3, int), smoothing=0)


def test_special_tokens_outweigh_the_rest():
    weights = with_special_tokens(np.ones(10), [0, 3, 99], multiple=30)
    assert weights[0] == weights[3] == 30 * 8
    assert weights[1] == 1
    np.testing.assert_array_equal(with_special_tokens(np.ones(4), [0], multiple=0), np.ones(4))


def test_read_lines_skips_blanks_and_names_a_missing_file(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n  \ntwo\n")
    assert list(read_lines([tmp_path / "a.txt"])) == ["one", "two"]
    with pytest.raises(ValueError, match="missing.txt not found"):
        list(read_lines([tmp_path / "missing.txt"]))


def test_local_csv_and_json_load_and_missing_column(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"good tea",1\n"bad tea",0\n')
    (tmp_path / "d.jsonl").write_text('{"text": "good", "label": 1}\n')
    records = load_records(tmp_path / "d.csv")
    assert column(records, "text") == ["good tea", "bad tea"] and column(records, "label") == [1, 0]
    assert column(load_records(tmp_path / "d.jsonl"), "label") == [1]
    with pytest.raises(ValueError, match="column 'sentence' not found; the data has columns"):
        column(records, "sentence")
    with pytest.raises(ValueError, match="data file .*nope.csv not found"):
        load_records([tmp_path / "nope.csv", tmp_path / "d.csv"])


def test_calibration_counts_are_tokenized_once_per_corpus(tmp_path):
    from projclust_onnx import ProjClustConfig
    from projclust_onnx.core.calibration import calibration_counts, sample_weights

    class CountingTokenizer:
        name_or_path = "counting"
        all_special_ids = [0]
        calls = 0

        def __call__(self, texts, **_):
            CountingTokenizer.calls += 1
            return {"input_ids": [[0, len(t) % 5] for t in texts]}

    (tmp_path / "c.txt").write_text("abc\nde\n")
    config = ProjClustConfig(calibration_text=[str(tmp_path / "c.txt")], calibration_smoothing=0.5)
    tokenizer = CountingTokenizer()
    first = calibration_counts(config, 5, tokenizer)
    again = calibration_counts(ProjClustConfig(n_clusters=3, calibration_text=[str(tmp_path / "c.txt")]), 5, tokenizer)
    assert again is first and CountingTokenizer.calls == 1
    np.testing.assert_array_equal(first, [2, 0, 1, 1, 0])
    weights, n_tokens, n_special = sample_weights(config, 5, tokenizer)
    assert n_tokens == 4 and n_special == 1
    np.testing.assert_allclose(weights[1:], [0.5, 1.5, 1.5, 0.5])
    assert weights[0] == 30 * weights[1:].sum()


def test_empty_and_binary_calibration_files_are_warned_of(tmp_path, caplog):
    """Issue 16, 6: an empty file was silently unweighted, a binary one tokenized without a word."""
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (tmp_path / "ok.txt").write_text("tea\n")
    with caplog.at_level("WARNING", logger="projclust_onnx.core.calibration"):
        lines = list(read_lines([tmp_path / n for n in ("empty.txt", "blob.bin", "latin1.txt", "ok.txt")]))
    messages = [r.getMessage() for r in caplog.records]
    assert lines[-1] == "tea"
    assert any(f"calibration text {tmp_path / 'empty.txt'} holds no text (empty or blank)" in m for m in messages)
    assert any(f"calibration text {tmp_path / 'blob.bin'} does not look like text (it holds NUL bytes)" in m
               for m in messages)
    assert any(f"{tmp_path / 'latin1.txt'} does not look like text (byte 3 is not UTF-8)" in m for m in messages)
    assert not any("ok.txt" in m for m in messages) and len(messages) == 3


def test_a_file_without_newlines_is_read_in_pieces_with_progress(tmp_path):
    """Issue 16, 6: a huge one-line file is tokenized a piece at a time, cut at whitespace, its bytes counted."""
    from projclust_onnx.core import calibration

    words = [f"w{i}" for i in range(120_000)]
    (tmp_path / "one.txt").write_text(" ".join(words))
    read = []
    pieces = list(read_lines([tmp_path / "one.txt"], progress=read.append))
    assert len(pieces) > 5 and all(len(p) <= calibration._PIECE_CHARS for p in pieces)
    assert " ".join(pieces).split() == words  # no word cut in two
    assert sum(read) == (tmp_path / "one.txt").stat().st_size


def test_tokenizing_shows_a_bar_with_the_tokens_counted(tokenizer, tmp_path, capsys, monkeypatch):
    from projclust_onnx import ProjClustConfig
    from projclust_onnx.common import progress

    monkeypatch.setattr(progress, "interactive", lambda: True)  # a terminal: the bar draws
    from projclust_onnx.core.calibration import calibration_counts

    (tmp_path / "bar.txt").write_text("the cat sat on the mat\n" * 50)
    counts = calibration_counts(ProjClustConfig(calibration_text=[tmp_path / "bar.txt"]), tokenizer.vocab_size,
                                tokenizer, progress=True)
    err = capsys.readouterr().err
    assert "tokenizing calibration text" in err and f"{int(counts.sum()):,} tokens" in err


def test_directory_given_as_calibration_text_is_called_one(tmp_path):
    with pytest.raises(ValueError, match=f"calibration text {tmp_path} is a directory; give the text files in it"):
        list(read_lines([tmp_path]))


def test_missing_local_data_file_is_not_sent_to_the_hub(tmp_path):
    """Issue 16, 6: was `no data file at .../['.../nothere.csv']` from the hub loader."""
    with pytest.raises(ValueError, match=f"data file {tmp_path / 'nothere.csv'} not found; give existing"):
        load_records(tmp_path / "nothere.csv")


def test_zero_smoothing_without_tokens_names_the_flag():
    from projclust_onnx.common.errors import SettingError

    with pytest.raises(SettingError) as caught:
        token_weights(np.zeros(4, np.int64), 0.0)
    assert "no token was counted and calibration_smoothing=0" in str(caught.value)
    assert caught.value.for_cli().endswith("or --calibration-smoothing > 0") and " smoothing=" not in str(caught.value)


def test_calibration_without_tokenizer_files_is_refused_naming_them_and_transformers_is_not_asked(tmp_path,
                                                                                                 monkeypatch):
    """A model directory with no tokenizer file is known to have none without importing transformers (seconds)."""
    import sys

    from tiny_models import embedding_model, write_model_dir

    from projclust_onnx import ProjClustCompressor, ProjClustConfig

    model, _ = embedding_model(300, 16)
    src = write_model_dir(tmp_path / "src", model).parent
    (tmp_path / "c.txt").write_text("some calibration text\n")
    monkeypatch.setitem(sys.modules, "transformers", None)  # importing it now would raise ImportError
    with pytest.raises(ValueError, match=r"calibration needs the model's tokenizer.*none of tokenizer.json"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(
            calibration_text=[str(tmp_path / "c.txt")]), verbose=False)


# ---------------------------------------------------------------------- calibration sources refused up front
SMALL_FLAGS = ["--rank", "3", "--clusters", "2", "--n-init", "2", "-q"]


@pytest.fixture
def tiny_model_dir(tmp_path):
    return write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent


def test_empty_calibration_dataset_is_refused_before_the_fit(tiny_model_dir, tmp_path, capsys,
                                                              nothing_weighted_or_clustered):
    empty = tmp_path / "empty.csv"
    empty.touch()
    out = tmp_path / "out"
    args = ["compress", "-m", tiny_model_dir, "-o", out, "--calibration-dataset", empty, *SMALL_FLAGS]
    line = one_line_error(in_process(capsys, *args))  # the fit and the weighting fail the test if they run
    assert "--calibration-dataset" in line and str(empty) in line and "empty" in line
    assert_nothing_written(out)


def test_hub_dataset_name_while_offline_is_refused_at_once(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    start = time.monotonic()
    done = in_process(capsys, "compress", "-m", tiny_model_dir, "-o", out, "--calibration-dataset",
                      "nonexistent_name", *SMALL_FLAGS)
    elapsed = time.monotonic() - start
    line = one_line_error(done)
    assert "--calibration-dataset" in line and "'nonexistent_name'" in line and "the hub is offline" in line
    assert elapsed < 20, f"took {elapsed:.0f} s"
    assert_nothing_written(out)


@pytest.mark.parametrize("kind", ["device", "named pipe"])
def test_devices_and_fifos_as_calibration_text_are_named(tiny_model_dir, tmp_path, kind, capsys):
    """/dev/null or a FIFO given as a text file: named for what it is (a FIFO read would wait for a writer)."""
    if kind == "device":
        path = "/dev/null"
    else:
        path = tmp_path / "pipe"
        os.mkfifo(path)
    out = tmp_path / "out"
    line = one_line_error(in_process(capsys, "compress", "-m", tiny_model_dir, "-o", out, "--calibration-text", path,
                                     *SMALL_FLAGS))
    assert "--calibration-text" in line and str(path) in line and kind in line
    assert_nothing_written(out)
