"""Bad input ends in one line and exit code 2, before any clustering, naming what the user typed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import onnx
import pytest
from cli_run import CLI, cli, one_line_error
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import ProjClustCompressor, ProjClustConfig

SMALL = dict(n_clusters=2, rank=3, n_init=2, anneal_steps=2)


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """A tmpfs at path (read-only, or tiny); skip where this user may not mount."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs (root in a container that allows it): {done.stderr!r}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_destination_fails_before_clustering(model_dir, tmp_path, no_clustering):
    """F3: one line naming the path, not a traceback after the fit."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        with pytest.raises(ValueError, match=f"cannot write in {ro}"):
            ProjClustCompressor.from_pretrained(model_dir).compress(ro / "out", ProjClustConfig(**SMALL))
        line = one_line_error(cli("compress", "--model", str(model_dir), "--output", str(ro / "out"), "-q"))
        assert str(ro) in line and "Read-only file system" in line


def test_full_disk_fails_before_clustering(tmp_path, no_clustering):
    """F4: a destination without room is refused up front."""
    src = write_model_dir(tmp_path / "src", embedding_model(3000, 64)[0]).parent  # about 0.8 MB
    with mounted_tmpfs(tmp_path / "full", "size=256k") as full:
        with pytest.raises(ValueError, match="not enough space for the output"):
            ProjClustCompressor.from_pretrained(src).compress(full / "out", ProjClustConfig(**SMALL))
        assert list(full.iterdir()) == []


def test_full_tmpdir_is_not_needed(model_dir, tmp_path):
    """F4: the parity check writes into the output's stage, not TMPDIR."""
    with mounted_tmpfs(tmp_path / "tmpdir", "size=4k") as tmpdir:
        (tmpdir / "filler").write_bytes(b"x" * 4096)
        done = cli("compress", "--model", str(model_dir), "--output", str(tmp_path / "out"), "--rank", "3",
                   "--clusters", "2", "-q", env={"TMPDIR": str(tmpdir)})
        assert done.returncode == 0, done.stderr


def test_oserror_during_save_is_one_line(model_dir, tmp_path):
    """An OSError anywhere (here: the output's parent is a file) is one line naming the path."""
    (tmp_path / "file").write_text("x")
    line = one_line_error(cli("compress", "--model", str(model_dir), "--output", str(tmp_path / "file" / "out"),
                              "-q"))
    assert str(tmp_path / "file") in line


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "--seed=-1 must be in [0, 9223372036854775807]"),
    (["--seed", str(2**70)], "--seed=1180591620717411303424 must be in"),
    (["--calibration-smoothing", "nan"], "--calibration-smoothing=nan must be a finite number"),
    (["--special-token-weight", "-1"], "--special-token-weight=-1.0 must be >= 0"),
    (["--n-init", "0"], "--n-init=0 must be >= 1"),
    (["--device", "foo"], "--device='foo' must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (["--rank", "7", "--clusters", "5"], "--rank=7 with --clusters=5 stores"),
    (["--ids-input", "tokens"], "no graph input named 'tokens'"),
], ids=["seed-negative", "seed-huge", "smoothing-nan", "special-weight", "n-init", "device", "rank-too-big",
        "ids-input"])
def test_settings_are_refused_by_their_flag_before_clustering(model_dir, tmp_path, args, message):
    """F7, F12 and --rank: the flag the user typed, before any clustering (the run takes seconds)."""
    start = time.monotonic()
    line = one_line_error(cli("compress", "--model", str(model_dir), "--output", str(tmp_path / "out"), "-q",
                              *args))
    assert message in line
    assert time.monotonic() - start < 60 and not (tmp_path / "out").exists()


def test_occupied_output_names_the_flag(model_dir, tmp_path):
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    line = one_line_error(cli("compress", "--model", str(model_dir), "--output", str(out), "-q"))
    assert "pass --overwrite to replace it" in line and "overwrite=True" not in line


@pytest.mark.parametrize("name", ["typo/", "./typo", "no/such/dir"])
def test_missing_local_model_is_not_sent_to_the_hub(tmp_path, name):
    """F12: a path-like name that does not exist says so at once instead of retrying the hub."""
    start = time.monotonic()
    done = subprocess.run([*CLI, "inspect", "--model", name], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "does not exist" in one_line_error(done)
    assert time.monotonic() - start < 30


def test_uncached_hub_id_offline_says_so(tmp_path):
    done = subprocess.run([*CLI, "inspect", "--model", "someone/not-cached-model"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert "HF_HUB_OFFLINE is set and the hub cache does not hold it" in one_line_error(done)


def truncated_copy(model: onnx.ModelProto) -> bytes | None:
    """The serialized model cut short by a few bytes, at a cut that still parses."""
    data = model.SerializeToString()
    for cut in range(1, 64):
        try:
            onnx.load_from_string(data[:-cut])
        except Exception:
            continue
        return data[:-cut]
    return None


def test_file_truncated_at_the_end_is_called_truncated(tmp_path, no_clustering):
    """F8: parses, lost its opset_import; the error says truncated, not 'default opset is 0'."""
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8)[0]).parent
    data = truncated_copy(onnx.load(str(src / "model.onnx")))
    assert data is not None
    (src / "model.onnx").write_bytes(data)
    with pytest.raises(ValueError, match="fails onnx.checker .* truncated or damaged"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))


def test_old_opset_is_refused_before_clustering(tmp_path, no_clustering):
    src = write_model_dir(tmp_path / "src", embedding_model(60, 8, opset=11)[0]).parent
    with pytest.raises(ValueError, match="default opset is 11; the rewrite needs opset >= 13"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))


def test_parity_input_kinds_are_checked_before_clustering(tmp_path, no_clustering):
    from onnx import TensorProto, helper

    model, _ = embedding_model(60, 8)
    model.graph.input.append(helper.make_tensor_value_info("prompt", TensorProto.STRING, [1]))
    src = write_model_dir(tmp_path / "src", model).parent
    with pytest.raises(ValueError, match="input 'prompt' of type STRING is not supported by the parity check"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(**SMALL))
