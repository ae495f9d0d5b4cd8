"""Issue 16: every check that cannot depend on the fit runs before it, and ends in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import onnx
import pytest
from cli_run import CLI, assert_nothing_written, cli, in_process, one_line_error
from onnx import TensorProto, helper, numpy_helper
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import ProjClustCompressor, ProjClustConfig, ProjectiveClustering

SMALL = dict(n_clusters=2, rank=3, n_init=2, anneal_steps=2)
SMALL_FLAGS = ["--rank", "3", "--clusters", "2", "--n-init", "2", "-q"]


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent


def compress(model_dir, tmp_path, **settings):
    out = tmp_path / "out"
    try:
        return ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**settings))
    finally:
        assert not out.exists() or (out / "projclust_manifest.json").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_weighting(model_dir, tmp_path, nothing_weighted_or_clustered):
    with pytest.raises(ValueError, match="device='cuda' asked for, but torch sees no CUDA GPU here"):
        compress(model_dir, tmp_path, **SMALL, device="cuda")
    line = one_line_error(cli("compress", "-m", model_dir, "-o", tmp_path / "out", "--device", "cuda", "-q"))
    assert "--device='cuda'" in line and "device='auto'" not in line


def test_unreachable_target_ratio_is_refused_before_weighting(model_dir, tmp_path, nothing_weighted_or_clustered):
    with pytest.raises(ValueError, match=r"target_ratio=1000 asks for 2 bytes, but the smallest storage .* takes"):
        compress(model_dir, tmp_path, target_ratio=1000)


def test_reachable_target_ratio_is_not_refused(model_dir, tmp_path):
    """The bound is the chooser's own smallest candidate: just inside it, the chooser runs and fits."""
    from projclust_onnx.core.chooser import smallest_candidate_bytes

    ratio = 60 * 8 * 4 / smallest_candidate_bytes(60, 8, 4)
    report = compress(model_dir, tmp_path, target_ratio=ratio * 0.999, n_init=2, anneal_steps=2)
    assert report.choice["chosen"]["bytes"] <= 60 * 8 * 4 / ratio * 1.002


def _write(tmp_path, proto) -> object:
    directory = tmp_path / "bad"
    directory.mkdir()
    onnx.save(proto, str(directory / "model.onnx"))
    (directory / "config.json").write_text('{"model_type": "bert"}\n')
    return directory


def test_nan_in_the_table_is_named_by_its_initializer(tmp_path, nothing_weighted_or_clustered):
    proto, table = embedding_model(60, 8)
    table = table.copy()
    table[7, 3], table[9, 0] = np.nan, np.inf
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(table, proto.graph.initializer[0].name))
    with pytest.raises(ValueError, match=r"'bert.embeddings.word_embeddings.weight' holds 2 NaN or infinite values "
                                         r"\(rows 7, 9\)"):
        compress(_write(tmp_path, proto), tmp_path, **SMALL)


def test_bfloat16_table_is_refused_in_one_line(tmp_path):
    """Gather(bfloat16 table) -> Cast(float): refused before the fit, not an invalid rewrite after it."""
    proto, table = embedding_model(60, 8, position=False)
    bits = (table.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    name = proto.graph.initializer[0].name
    bf16 = helper.make_tensor(name, TensorProto.BFLOAT16, table.shape, bits.tobytes(), raw=True)
    proto.graph.initializer[0].CopyFrom(bf16)
    gather = next(n for n in proto.graph.node if n.op_type == "Gather")
    gather.output[0] = "words_bf16"
    proto.graph.node.insert(list(proto.graph.node).index(gather) + 1,
                            helper.make_node("Cast", ["words_bf16"], ["words"], to=TensorProto.FLOAT, name="cast"))
    onnx.checker.check_model(proto, full_check=True)
    line = one_line_error(cli("compress", "-m", _write(tmp_path, proto), "-o", tmp_path / "out", "--rank", "3",
                              "--clusters", "2", "-q"))
    assert "is stored as bfloat16" in line and "float16" in line and not (tmp_path / "out").exists()


def test_declared_output_type_that_contradicts_the_graph_is_refused_up_front(tmp_path,
                                                                             nothing_weighted_or_clustered):
    """An fp16 table whose graph output is declared float passes the plain checker, not the full one."""
    proto, _ = embedding_model(60, 8, dtype=np.float16)
    proto.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(proto)
    with pytest.raises(ValueError, match="fails onnx.checker's full check .* declared types or shapes contradict"):
        compress(_write(tmp_path, proto), tmp_path, **SMALL)


def test_oserror_without_a_path_gets_the_output_path(model_dir, tmp_path, monkeypatch):
    """A full disk inside a library's write (onnx, ONNX Runtime) named no path."""
    import projclust_onnx.pipeline.compressor as compressor

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compressor, "save_model", full)
    with pytest.raises(OSError) as caught:
        compress(model_dir, tmp_path, **SMALL)
    assert caught.value.filename is not None and ".out.tmp-" in caught.value.filename


def test_benchmark_on_random_bytes_is_one_line(model_dir, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    line = one_line_error(cli("benchmark", model_dir, f"junk={junk}", "-o", tmp_path / "bench", "-q",
                              "--no-memory", "--no-plots", "--repeats", "1", "--warmup", "0"))
    assert str(junk / "model.onnx") in line and "cannot load" in line


def test_interrupt_during_imports_is_one_line(tmp_path):
    """SIGINT in the first second (still importing) exits 130 with one line, no traceback."""
    proc = subprocess.Popen([*CLI, "compress", "-m", str(tmp_path), "-o", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 2:
        pytest.skip(f"the run ended before the signal arrived: {err}")
    assert proc.returncode == 130, err
    assert [ln for ln in err.splitlines() if ln.strip()] == ["projclust-onnx: interrupted; no partial output was "
                                                             "left behind"]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_calibration_file_problems_are_refused_before_weighting(model_dir, tmp_path, nothing_weighted_or_clustered,
                                                                kind):
    path = tmp_path / "texts"
    if kind == "directory":
        path.mkdir()
    big = tmp_path / "big.txt"
    big.write_text("words and more words\n" * 1000)
    with pytest.raises(ValueError, match="does not exist" if kind == "missing" else "is a directory"):
        compress(model_dir, tmp_path, **SMALL, calibration_text=[str(big), str(path)])
    line = one_line_error(cli("compress", "-m", model_dir, "-o", tmp_path / "out", "-q", "--calibration-text",
                              big, path))
    assert line.startswith("projclust-onnx: error: --calibration-text: ")


@pytest.mark.slow  # three CLI processes: run by CI
def test_plan_refusals_name_flags_on_the_command_line(tmp_path):
    """The API names Python parameters, the CLI the flags (ids_input, target_ratio, compression, quantize)."""
    model = write_model_dir(tmp_path / "tied", embedding_model(60, 8, tied=True)[0]).parent
    line = one_line_error(cli("compress", "-m", model, "-o", tmp_path / "out", "-q", "--target-ratio", "4"))
    assert "--target-ratio cannot be used with a tied LM head" in line and "--compression" in line
    assert "--quantize" in line and "--head" in line
    with pytest.raises(ValueError, match="target_ratio cannot be used .* Give compression"):
        compress(model, tmp_path, target_ratio=4)
    line = one_line_error(cli("compress", "-m", model, "-o", tmp_path / "out", "-q", "--ids-input", "tokens"))
    assert "no graph input named 'tokens'" in line and "as --ids-input" in line


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. "
                                                               "DefaultCPUAllocator: can't allocate memory")],
                         ids=["MemoryError", "torch allocator"])
def test_running_out_of_memory_is_one_line(model_dir, tmp_path, monkeypatch, capsys, error):
    """`ulimit -v` below what the fit needs gave a torch traceback and exit 1."""
    from projclust_onnx.cli import main as cli_module

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(ProjectiveClustering, "fit", out_of_memory)
    code = cli_module.main(["compress", "-m", str(model_dir), "-o", str(tmp_path / "out"), "--rank", "3",
                            "--clusters", "2", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and [ln for ln in err.splitlines() if "error:" in ln] == [ln for ln in err.splitlines() if ln]
    assert "out of memory" in err and "ulimit -v" in err and not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# ---------------------------------------------------------------------- limits and companion files, before the fit
@pytest.mark.parametrize(("flags", "part"), [
    (["--max-initializer-bytes", "2048"], "cluster ids"),
    (["--quantize", "int4", "--max-initializer-bytes", "20000"], "U codes"),
], ids=["cluster-ids", "int4-u-codes"])
def test_max_initializer_bytes_below_a_whole_part_of_the_factors_is_refused_before_the_fit(
        tmp_path, capsys, nothing_weighted_or_clustered, flags, part):
    """The cluster ids (n bytes) and quantized U codes are read whole, never in row blocks: a limit below them
    is known from n, k and j alone."""
    model = write_model_dir(tmp_path / "wide", embedding_model(3000, 64)[0]).parent
    out = tmp_path / "out"
    args = ["compress", "-m", model, "-o", out, "--clusters", "5", "--rank", "32", *flags, "-q"]
    line = one_line_error(in_process(capsys, *args))  # with the fit and the weighting made to fail
    assert "--max-initializer-bytes" in line and part in line and "max_initializer_bytes" not in line
    assert_nothing_written(out)


def listing(directory) -> dict[str, str | None]:
    """The names in a folder, with each symbolic link's target (the folder here is flat)."""
    return {name: os.readlink(directory / name) if (directory / name).is_symlink() else None
            for name in sorted(os.listdir(directory))}


def test_a_symbolic_link_loop_in_the_model_folder_is_refused_before_the_fit(model_dir, tmp_path, capsys,
                                                                           nothing_weighted_or_clustered):
    """`ln -s . model/self`: copying the companions along would never end; one line names the link."""
    os.symlink(".", model_dir / "self")
    before = listing(model_dir)
    out = tmp_path / "out"
    args = ["compress", "-m", model_dir, "-o", out, *SMALL_FLAGS]
    line = one_line_error(in_process(capsys, *args))  # with the fit and the weighting made to fail
    assert "loop" in line and str(model_dir / "self") in line
    assert_nothing_written(out)
    assert listing(model_dir) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_companion_file_is_refused_before_the_fit(model_dir, tmp_path, capsys,
                                                               nothing_weighted_or_clustered):
    companion = model_dir / "vocab.txt"
    companion.write_text("[PAD]\n[UNK]\n")
    companion.chmod(0)
    try:
        out = tmp_path / "out"
        args = ["compress", "-m", model_dir, "-o", out, *SMALL_FLAGS]
        line = one_line_error(in_process(capsys, *args))  # with the fit and the weighting made to fail
        assert "cannot be read" in line and str(companion) in line
        assert_nothing_written(out)
    finally:
        companion.chmod(0o644)
