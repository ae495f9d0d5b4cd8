"""The command lines, through subprocess as a user runs them."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from cli_run import assert_nothing_written, in_process, one_line_error
from tiny_models import embedding_model, write_model_dir

CLI = [sys.executable, "-m", "projclust_onnx.cli"]


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent


def test_help_of_every_command():
    top = run(*CLI, "--help")
    assert top.returncode == 0 and "compress" in top.stdout and "inspect" in top.stdout
    compress = run(*CLI, "compress", "--help")
    for flag in ("--model", "--output", "--compression", "--rank", "--clusters", "--method", "--runtime", "--device",
                 "--seed", "--task", "--overwrite", "--calibration-text", "--calibration-dataset"):
        assert flag in compress.stdout


def test_console_script_and_optimum_cli_registration():
    for exe in ("projclust-onnx", "optimum-cli"):
        if shutil.which(exe) is None:
            pytest.fail(f"{exe} is not on PATH; is the package installed?")
    assert run("projclust-onnx", "--help").returncode == 0
    optimum = run("optimum-cli", "projclust", "--help")
    assert optimum.returncode == 0, optimum.stderr
    assert "compress" in optimum.stdout and "inspect" in optimum.stdout
    assert "--clusters" in run("optimum-cli", "projclust", "compress", "--help").stdout


def test_compress_prints_a_summary_and_writes_the_directory(model_dir, tmp_path):
    out = tmp_path / "out"
    done = run(*CLI, "compress", "--model", str(model_dir), "--output", str(out), "--rank", "3", "--clusters", "2",
               "--runtime", "onehot", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "k=2, j=3, layout=onehot" in done.stdout and "parity (max abs diff)" in done.stdout
    assert json.loads((out / "projclust_config.json").read_text())["graph"]["layout"] == "onehot"


def test_inspect_shows_the_match_and_the_budget(model_dir):
    done = run(*CLI, "inspect", "--model", str(model_dir), "--compression", "0.5", "--clusters", "2")
    assert done.returncode == 0, done.stderr
    assert "word_lookup: table bert.embeddings.word_embeddings.weight (60 x 8, float32, stored float)" in done.stdout
    assert "rejected lookup" in done.stdout and "position_lookup" in done.stdout
    assert "U + V + ids = " in done.stdout and "<= (1-c) * stored table = 960" in done.stdout


def test_inspect_prints_the_byte_arithmetic_of_quantized_factors(tmp_path):
    model_dir = write_model_dir(tmp_path / "wide", embedding_model(2048, 128, position=False)[0]).parent
    done = run(*CLI, "inspect", "--model", str(model_dir), "--compression", "0.9", "--clusters", "3",
               "--quantize", "int4")
    assert done.returncode == 0, done.stderr
    assert "U int4" in done.stdout and "float16 scales and zero points per block of 32" in done.stdout
    assert "V bytes               k*j*d*2 (float16)" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compression", "1.5"], "compression=1.5 must lie in (0, 1)"),
        (["--method", "svd", "--clusters", "3"], "--clusters=3 must be 1"),
        (["--rank", "8"], "rank=8 must be < the table's dim=8"),
        (["--clusters", "100", "--rank", "2"], "--clusters=100 must be <= the table's 60 rows"),
    ],
)
def test_bad_settings_give_one_line_and_exit_code_2(model_dir, tmp_path, args, message):
    done = run(*CLI, "compress", "--model", str(model_dir), "--output", str(tmp_path / "out"), "--quiet", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("projclust-onnx: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # several CLI processes, 5-8 s: run by CI
def test_occupied_output_and_missing_model(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("x")
    done = run(*CLI, "compress", "--model", str(model_dir), "--output", str(out), "--rank", "2", "--quiet",
               "--overwrite")
    assert done.returncode == 2 and "refusing to replace" in done.stderr and (out / "x").read_text() == "x"
    missing = run(*CLI, "inspect", "--model", str(tmp_path / "nowhere.onnx"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_optimum_cli_reports_errors_the_same_way(model_dir, tmp_path):
    done = run("optimum-cli", "projclust", "compress", "--model", str(model_dir), "--output", str(tmp_path / "o"),
               "--compression", "2")
    assert done.returncode == 2
    assert "compression=2.0 must lie in (0, 1)" in done.stderr


@pytest.mark.slow  # several CLI processes, 5-8 s: run by CI
def test_finetune_needs_training_data(tmp_path):
    done = run(*CLI, "finetune", "--output", str(tmp_path / "o"))
    assert done.returncode == 2 and "give training data" in done.stderr
    (tmp_path / "t.csv").write_text('text,label\n"a",1\n')
    done = run(*CLI, "finetune", "--data-files", str(tmp_path / "t.csv"), "--output", str(tmp_path / "o"))
    assert done.returncode == 2 and "needs --text-column" in done.stderr


def test_version_and_description():
    from projclust_onnx import __version__

    done = run(*CLI, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"projclust-onnx {__version__}"
    top = run(*CLI, "--help").stdout
    assert "Make the word embedding of an ONNX transformer smaller" in top and "thin shell" not in top


@pytest.mark.parametrize("command", ["compress", "inspect", "finetune", "benchmark"])
def test_every_flag_has_help(command):
    from projclust_onnx.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
        takes_value = action.nargs != 0 and action.option_strings and action.default not in (None, [], False)
        if takes_value:
            assert "default" in action.help, f"{command} {action.option_strings} does not state its default"


def test_optimum_cli_titles_output_for_its_command(model_dir):
    done = run("optimum-cli", "projclust", "inspect", "--model", str(model_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("optimum-cli projclust inspect\n")


def test_compress_announces_each_phase(model_dir, tmp_path):
    done = run(*CLI, "compress", "--model", str(model_dir), "--output", str(tmp_path / "out"), "--rank", "3",
               "--clusters", "2")
    assert done.returncode == 0, done.stderr
    lines = [line.split(": ", 1)[1] for line in done.stderr.splitlines() if line.startswith("projclust-onnx: ")]
    starts = [line for line in lines if line.endswith(" ...")]
    assert [p.split(" ")[0] for p in starts] == ["reading", "weighting", "clustering", "rewriting", "checking",
                                                 "writing"]
    # stderr is a pipe here: each phase also says when it ended, and the clustering's steps are counted there
    ends = [line for line in lines if ": done (" in line]
    assert len(ends) == len(starts) and "\r" not in done.stderr
    assert "seeding" in done.stderr and "annealing" in done.stderr and "Lloyd" in done.stderr


def test_python_api_is_quiet_off_a_terminal(model_dir, tmp_path):
    code = ("import sys; from projclust_onnx import ProjClustCompressor, ProjClustConfig; "
            "ProjClustCompressor.from_pretrained(sys.argv[1]).compress(sys.argv[2], "
            "ProjClustConfig(n_clusters=2, rank=3, n_init=2))")
    done = run(sys.executable, "-c", code, str(model_dir), str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "projclust-onnx:" not in done.stderr and "seeding" not in done.stderr


def one_error_line(done: subprocess.CompletedProcess, prog: str = "projclust-onnx") -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr
    assert "usage:" not in done.stderr and not done.stdout
    return lines[0]


@pytest.mark.parametrize(("args", "message"), [
    (["compress", "--rank", "x"], "argument --rank: invalid int value: 'x' (see projclust-onnx compress --help)"),
    (["compress", "--method", "pca"], "argument --method: invalid choice: 'pca'"),
    (["compress", "--bogus", "1"], "unrecognized arguments: --bogus 1 (see projclust-onnx compress --help)"),
    (["inspect", "--clusters"], "argument --clusters/-k: expected one argument"),
    (["nonsense"], "invalid choice: 'nonsense' (choose from 'compress', 'inspect'"),
], ids=["bad-int", "bad-choice", "unknown-flag", "missing-value", "unknown-command"])
def test_usage_errors_are_one_line_without_the_usage(args, message):
    """Issue 16, 6: argparse printed 20 lines of usage before the one error line."""
    assert message in one_error_line(run(*CLI, *args))


def test_help_still_prints_the_usage():
    done = run(*CLI, "compress", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: projclust-onnx compress")


def test_optimum_cli_usage_errors_are_one_line_too():
    done = run("optimum-cli", "projclust", "compress", "--rank", "x")
    line = one_error_line(done, "optimum-cli projclust compress")
    assert "argument --rank: invalid int value: 'x' (see optimum-cli projclust compress --help)" in line


@pytest.mark.parametrize(("args", "message"), [
    (["--file-name", "nothere.onnx"], "--file-name='nothere.onnx' not found in"),
    (["--special-token-weight", "1e308"], "--special-token-weight=1e+308 must be <= 1e+06"),
    (["--quantize", "int8"], "int8 factors take ranks in multiples of --block-size=32, and the table's dim=8 leaves "
                             "none below it; give --quantize 'none'"),
    (["--compression", "0.99"], "lower --compression or --clusters, or --quantize 'int8' or 'int4'"),
    (["--target-ratio", "4", "--rank", "2"], "give --target-ratio or --rank, not both"),
], ids=["file-name", "special-weight", "block-over-dim", "no-room", "ratio-and-rank"])
def test_errors_name_flags_not_python_parameters(model_dir, tmp_path, args, message):
    """Issue 16, 6: `n_clusters=`, `file_name=`, `rank` and the like on the command line."""
    line = one_error_line(run(*CLI, "compress", "--model", str(model_dir), "--output", str(tmp_path / "out"), "-q",
                              *args))
    assert message in line
    for python in ("n_clusters", "file_name", "block_size", "special_token_weight", "target_ratio"):
        assert python not in line
    assert not re.search(r"(?<![-\w])(rank|quantize|compression)(=|,| or)", line)  # the settings, not prose
    assert not (tmp_path / "out").exists()


def test_finetune_epochs_are_named_by_their_flag(model_dir, tmp_path):
    (tmp_path / "t.csv").write_text('text,label\n"a",1\n"b",0\n')
    line = one_error_line(run(*CLI, "finetune", "--model", str(model_dir), "--data-files", str(tmp_path / "t.csv"),
                              "--text-column", "text", "--epochs", "0", "--output", str(tmp_path / "o")))
    assert "--epochs=0.0 must be > 0" in line and " epochs=" not in line


# ---------------------------------------------------------------------- issue 26: outputs and streams a user has
SMALL_FLAGS = ["--rank", "3", "--clusters", "2", "--n-init", "2"]


def optimum_cli_module() -> list[str] | None:
    """`python -m optimum.commands.optimum_cli` of this interpreter, or None where Optimum is not installed."""
    try:
        found = importlib.util.find_spec("optimum.commands.optimum_cli") is not None
    except ImportError:
        found = False
    return [sys.executable, "-m", "optimum.commands.optimum_cli"] if found else None


def test_an_output_that_is_a_symbolic_link_loop_is_one_line(model_dir, tmp_path, capsys):
    """`ln -s loop loop; projclust-onnx compress -o loop`: one line, not an OSError traceback (ELOOP)."""
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    commands = [(None, "projclust-onnx: error: ")]  # in this process; optimum-cli as a user runs it
    if optimum_cli_module() is not None:  # the same through optimum-cli where Optimum is installed
        commands.append(([*optimum_cli_module(), "projclust"], "optimum-cli projclust compress: error: "))
    for command, prefix in commands:
        args = ["compress", "--model", str(model_dir), "--output", str(loop), *SMALL_FLAGS, "-q"]
        done = in_process(capsys, *args) if command is None else run(*command, *args)
        line = one_line_error(done)
        assert line.startswith(prefix) and "symbolic link that loops" in line and str(loop) in line
        assert os.readlink(loop) == str(loop)  # the link is left as it was
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".loop.")]


def test_optimum_cli_unknown_flag_is_one_line(tmp_path):
    """Unknown flags reached optimum-cli's root parser, whose error is two lines."""
    optimum_cli = optimum_cli_module()
    if optimum_cli is None:
        pytest.skip("optimum-cli is not importable (pip install optimum)")
    done = subprocess.run([*optimum_cli, "projclust", "compress", "--bogus"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    line = one_line_error(done)
    assert line.startswith("optimum-cli projclust compress: error: ") and "unrecognized arguments: --bogus" in line
    assert "usage:" not in done.stderr and not done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing at the default output, ./projclust-output


def test_a_summary_stdout_cannot_take_does_not_fail_a_written_run(model_dir, tmp_path):
    """stdout on a full disk (/dev/full): the output is written, the run succeeds, stderr says the summary was
    lost."""
    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        done = subprocess.run([*CLI, "compress", "--model", str(model_dir), "--output", str(out), *SMALL_FLAGS, "-q"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "model.onnx").is_file() and (out / "projclust_manifest.json").is_file()
    assert any("summary could not be printed" in line for line in done.stderr.splitlines()), done.stderr
    assert "Traceback" not in done.stderr


def test_a_non_ascii_output_name_on_an_ascii_stream(model_dir, tmp_path):
    """PYTHONIOENCODING=ascii and an output named outé: the phase lines and the summary print the path escaped."""
    out = tmp_path / "out\u00e9"
    done = subprocess.run([*CLI, "compress", "--model", str(model_dir), "--output", str(out), *SMALL_FLAGS],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    assert (out / "model.onnx").is_file() and "Traceback" not in done.stderr
    assert "parity (max abs diff)" in done.stdout


# ---------------------------------------------------------------------- signals (projclust_onnx/cli/__init__.py)
@pytest.mark.parametrize(("signum", "delay", "code"), [(signal.SIGTERM, 0.3, 143), (signal.SIGINT, 0.05, 130)],
                         ids=["SIGTERM-0.3s", "SIGINT-0.05s"])
def test_a_signal_soon_after_the_start_ends_the_run_in_one_line(tmp_path, signum, delay, code):
    """A signal while the program starts (imports) exits 128 + the signal with an 'interrupted' line, no
    traceback, and nothing written. A run that ends before the signal is tried again on a bigger model."""
    out = tmp_path / "out"
    for rows, dim in ((60, 8), (3000, 64)):
        model = write_model_dir(tmp_path / f"m{rows}", embedding_model(rows, dim)[0]).parent
        proc = subprocess.Popen([*CLI, "compress", "--model", str(model), "--output", str(out), *SMALL_FLAGS],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            break
        shutil.rmtree(out)  # the run finished before the signal came
    else:
        pytest.skip(f"the run finished within {delay} s even on a 3000-row model: the signal came too late")
    if proc.returncode == 1 and "KeyboardInterrupt" in err and "projclust_onnx" not in err:
        # Python had not finished starting (its site module runs the .pth files of site-packages, then runpy
        # is imported) when the signal came: no line of projclust-onnx had run, nor could have set a handler.
        pytest.xfail(f"{signal.Signals(signum).name} after {delay} s came while the interpreter was still "
                     "starting (its site module's .pth files, or runpy), before projclust-onnx's first line: "
                     f"Python prints a traceback of its own, exit {proc.returncode}")
    assert proc.returncode == code, err
    assert any("interrupted" in line for line in err.splitlines()) and "Traceback" not in err, err
    assert_nothing_written(out)


def test_failures_of_memory_and_libraries_are_one_line_and_bugs_keep_their_traceback():
    """error_line: what a user can act on is one line; anything else (None) keeps its traceback."""
    from google.protobuf.message import EncodeError

    from projclust_onnx.cli.main import error_line

    assert "out of memory" in error_line(MemoryError())
    assert "most likely out of memory" in error_line(EncodeError("Failed to serialize proto"))
    loading = ImportError("libtorch_cpu.so: failed to map segment from shared object", name="torch._C")
    assert error_line(loading).startswith("cannot load torch._C") and "ulimit -v" in error_line(loading)
    assert "out of memory" in error_line(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert error_line(OSError(28, "No space left on device", "/x/model.onnx")) == \
        "No space left on device: /x/model.onnx"
    assert error_line(KeyError("a bug")) is None and error_line(RuntimeError("a bug")) is None
