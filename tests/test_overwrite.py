"""Issue 16: --overwrite replaces only what this tool wrote; leftovers of dead runs go first; a signal
during the final move is reported with what is in place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cli_run import CLI, cli, in_process, one_line_error
from tiny_models import embedding_model, write_model_dir

import projclust_onnx.pipeline.output_dir as output_dir
from projclust_onnx import ProjClustCompressor, ProjClustConfig, ProjectiveClustering
from projclust_onnx.pipeline.output_dir import Interrupted, check_output_dir, owner_tag, recover_stale

SMALL = dict(n_clusters=2, rank=3, n_init=2, anneal_steps=2)
SMALL_FLAGS = ["--rank", "3", "--clusters", "2", "--n-init", "2", "-q"]


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under directory (dotfiles included) with its bytes."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def dead_tag() -> str:
    """A tag in owner_tag()'s form naming a process that has ended."""
    _, start, boot = owner_tag().split("-")
    return f"{dead_pid()}-{start}-{boot}"


# ---------------------------------------------------------------------- what --overwrite may replace
@pytest.mark.parametrize("layout", ["home", "manifest-less config", "git checkout", "dotfile"], ids=str)
def test_overwrite_refuses_directories_holding_anything_it_did_not_write(model_dir, tmp_path, layout):
    """The cases users lost files in: one stray .onnx or a projclust_config.json made a folder 'a model'."""
    out = tmp_path / "dest"
    files = {
        "home": {".ssh/id_rsa": "key", "Documents/cv.txt": "cv", ".bashrc": "rc", "old.onnx": "x"},
        "manifest-less config": {"projclust_config.json": "{}", "important.docx": "doc"},
        "git checkout": {".git/HEAD": "ref: refs/heads/main", "model.onnx": "x"},
        "dotfile": {".env": "SECRET=1", "model.onnx": "x"},
    }[layout]
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = snapshot(out)
    line = one_line_error(cli("compress", "-m", model_dir, "-o", out, "--overwrite", *SMALL_FLAGS))
    assert "refusing to replace" in line and "nothing was changed" in line
    assert snapshot(out) == before and leftovers(out) == []


def test_a_forged_manifest_does_not_make_dotfiles_replaceable(model_dir, tmp_path):
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    (out / ".git").mkdir()
    (out / ".git" / "HEAD").write_text("ref")
    manifest = json.loads((out / "projclust_manifest.json").read_text())
    manifest["files"] += [".git/HEAD", "../elsewhere"]
    (out / "projclust_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"did not write \(.git/\)"):
        ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL), overwrite=True)
    assert (out / ".git" / "HEAD").read_text() == "ref"


def test_current_directory_is_never_the_output(model_dir, tmp_path, monkeypatch):
    """`cd project && projclust-onnx compress -o . --overwrite` deleted src/, notes and the export."""
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "main.py").write_text("print()")
    (project / "exported.onnx").write_bytes((model_dir / "model.onnx").read_bytes())
    before = snapshot(project)
    line = one_line_error(cli("compress", "-m", model_dir, "-o", ".", "--overwrite", *SMALL_FLAGS, cwd=project))
    assert "is the current directory" in line and "new subdirectory" in line
    for target, cwd in ((project, project), ("..", project / "src")):
        monkeypatch.chdir(cwd)
        with pytest.raises(ValueError, match="current directory; write into a new subdirectory"):
            ProjClustCompressor.from_pretrained(model_dir).compress(target, ProjClustConfig(**SMALL), overwrite=True)
    assert snapshot(project) == before


def test_home_directory_is_never_the_output(model_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = cli("compress", "-m", model_dir, "-o", home, "--overwrite", *SMALL_FLAGS, env={"HOME": str(home)})
    assert "is a home directory" in one_line_error(done)
    assert list(home.iterdir()) == []


def test_overwrite_must_be_a_bool(model_dir, tmp_path):
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    before = snapshot(out)
    for value in ("no", 1, None):
        with pytest.raises(ValueError, match="overwrite=.* must be True or False"):
            compressor.compress(out, ProjClustConfig(**SMALL, seed=4), overwrite=value)
    assert snapshot(out) == before


def test_earlier_output_is_replaced_whole_and_finetune_files_count_as_ours(model_dir, tmp_path):
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    (out / "projclust_finetune.json").write_text("{}")
    output_dir.add_to_manifest(out, ["projclust_finetune.json"])
    compressor.compress(out, ProjClustConfig(**SMALL, seed=2), overwrite=True)
    assert ProjClustConfig.from_pretrained(out).seed == 2 and not (out / "projclust_finetune.json").exists()
    assert leftovers(out) == []


def test_file_added_during_the_swap_window_is_kept(model_dir, tmp_path, monkeypatch):
    """A file that lands between the last check and the exchange: swapped back, refused, kept."""
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    real = output_dir._exchange
    calls = []

    def exchange_after_a_write(a, b):
        if not calls:
            (b / "late.txt").write_text("arrived late")
        calls.append(a)
        return real(a, b)

    monkeypatch.setattr(output_dir, "_exchange", exchange_after_a_write)
    with pytest.raises(ValueError, match=r"did not write \(late.txt\)"):
        compressor.compress(out, ProjClustConfig(**SMALL, seed=6), overwrite=True)
    assert len(calls) == 2 and (out / "late.txt").read_text() == "arrived late"
    assert ProjClustConfig.from_pretrained(out).seed == 0 and leftovers(out) == []


def test_mount_point_is_refused_before_the_fit(model_dir, tmp_path, monkeypatch):
    mount = tmp_path / "mnt"
    mount.mkdir()
    monkeypatch.setattr(output_dir.os.path, "ismount", lambda p: Path(p) == mount)
    with pytest.raises(ValueError, match="is a mount point.*give a directory inside it"):
        check_output_dir(mount, False, [model_dir])


def test_empty_tmpfs_mount_point_as_output_fails_before_the_fit(model_dir, tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs (root in a container that allows it): {done.stderr!r}")
    try:
        line = one_line_error(cli("compress", "-m", model_dir, "-o", mount, *SMALL_FLAGS))
        assert "is a mount point" in line and str(mount / "model") in line
        assert list(mount.iterdir()) == [] and leftovers(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ---------------------------------------------------------------------- signals during the swap
def test_signal_during_the_exchange_reports_the_new_output_in_place(model_dir, tmp_path, monkeypatch):
    """A SIGINT sent to the process (any thread may take it) while the exchange runs is held until
    the swap is done, then raised saying the new output is in place; nothing is left behind."""
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    real = output_dir._exchange

    def interrupted_exchange(a, b):
        os.kill(os.getpid(), signal.SIGINT)
        threading.Event().wait(0.05)  # let the kernel deliver it, to whichever thread
        return real(a, b)

    monkeypatch.setattr(output_dir, "_exchange", interrupted_exchange)
    with pytest.raises(Interrupted) as caught:
        compressor.compress(out, ProjClustConfig(**SMALL, seed=7), overwrite=True)
    assert caught.value.exit_code == 130 and "holds the new output" in caught.value.outcome
    assert ProjClustConfig.from_pretrained(out).seed == 7 and leftovers(out) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_signal_during_a_delayed_renameat2_says_what_is_in_place(model_dir, tmp_path, signum):
    """The issue's reproduction: strace delays renameat2 by 3 s; the signal lands inside it."""
    import shutil
    import time

    if shutil.which("strace") is None:
        pytest.skip("needs strace (Debian package strace) to delay renameat2")
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    proc = subprocess.Popen(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=renameat2",
                             "-e", "inject=renameat2:delay_enter=3000000", *CLI, "compress", "-m", str(model_dir),
                             "-o", str(out), "--overwrite", "--seed", "9", *SMALL_FLAGS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    # The manifest is the stage's last file, written just before the (delayed) exchange.
    deadline, ready = time.monotonic() + 120, []
    while time.monotonic() < deadline and not ready:
        ready = [p for p in out.parent.glob(".out.tmp-*") if (p / "output" / "projclust_manifest.json").exists()]
        if proc.poll() is not None:
            pytest.skip(f"strace may not trace here, or the run ended first: {proc.communicate()}")
        time.sleep(0.02)
    assert ready, "the run never reached the exchange"
    time.sleep(1.0)  # inside the 3 s delay
    os.kill(int(ready[0].name.split("-")[1]), signum)  # the compressing process (its pid names the stage)
    _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert proc.returncode == 128 + signum, err
    assert len(lines) == 1 and f"{out} holds the new output" in lines[0] and "Traceback" not in err, err
    assert ProjClustConfig.from_pretrained(out).seed == 9 and leftovers(out) == []


# ---------------------------------------------------------------------- leftovers of dead runs
def dead_box(out: Path) -> Path:
    """A stage box as a run killed mid-way leaves it: marked for `out`, its lock released."""
    box = output_dir._sibling_box(out).create()
    box.release()
    (box.path / "output").mkdir()
    (box.path / "output" / "model.onnx").write_text("partial")
    return box.path


@pytest.mark.parametrize("refusal", [["--n-init", "0"], ["--compression", "abc"], ["--method", "bogus"],
                                     ["--bogus-flag"]], ids=["setting", "type", "choice", "unknown"])
def test_dead_stage_is_removed_even_when_the_run_is_refused(model_dir, tmp_path, refusal, capsys, caplog):
    """Issue 26, case 6: argparse's own refusals (a bad type, choice or flag) clean up too."""
    out = tmp_path / "out"
    dead_box(out)
    done = in_process(capsys, "compress", "-m", model_dir, "-o", out, *refusal)
    assert done.returncode == 2 and any("removed .out.tmp-" in r.message for r in caplog.records), done.stderr
    errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert leftovers(out) == []


def test_stage_whose_run_ended_is_removed_and_a_live_one_kept(tmp_path):
    """The lock decides, not the pid: a container's next run often gets the same pid."""
    out = tmp_path / "out"
    dead = dead_box(out)
    live = output_dir._sibling_box(out).create()
    try:
        done = recover_stale(out)
        assert done == [f"removed {dead.name}, left by an interrupted run"]
        assert leftovers(out) == [live.path.name]
    finally:
        live.remove()


@pytest.mark.slow  # several CLI processes, 5-8 s: run by CI
def test_dead_export_folders_in_tmpdir_are_removed_first(model_dir, tmp_path):
    """A SIGKILL during an export left the whole exported model in TMPDIR forever; a folder merely named
    like ours is left."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    dead = output_dir.Box(tmpdir / f"projclust-export-{dead_tag()}-abc123", "export", "export").create()
    dead.release()
    live = output_dir.Box(tmpdir / f"projclust-export-{owner_tag()}-def456", "export", "export").create()
    other = tmpdir / f"projclust-export-{dead_tag()}-unrelated"
    other.mkdir()
    (other / "model.onnx").write_text("x")
    try:
        done = cli("compress", "-m", model_dir, "-o", tmp_path / "out", *SMALL_FLAGS, env={"TMPDIR": str(tmpdir)})
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in tmpdir.glob("projclust-*")) == sorted([live.path.name, other.name])
    finally:
        live.remove()


def test_export_folder_is_named_for_cleanup(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with output_dir.temp_dir("export") as made:
        box = Path(made).parent
        assert box.name.startswith(f"projclust-export-{owner_tag()}-") and box.parent == tmp_path
        assert output_dir.remove_dead_temp_dirs() == [] and Path(made).exists()
    assert not box.exists()


def test_benchmark_overwrite_never_replaces_a_compressed_model(model_dir, tmp_path):
    """Issue 26, case 2: `benchmark ... --output c2 --overwrite` replaced the compressed model in c2 with
    its report. A report replaces only an earlier report, and compress only an earlier model."""
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    ProjClustCompressor.from_pretrained(model_dir).compress(c1, ProjClustConfig(**SMALL))
    ProjClustCompressor.from_pretrained(model_dir).compress(c2, ProjClustConfig(**SMALL, seed=2))
    before = snapshot(c2)
    line = one_line_error(cli("benchmark", model_dir, c1, "--output", c2, "--overwrite", "--repeats", "1",
                              "--warmup", "0", "--no-memory", "--no-plots", "-q"))
    assert "refusing to replace" in line and "earlier model output" in line and "not a benchmark output" in line
    assert snapshot(c2) == before and leftovers(c2) == []


def test_output_inside_a_hugging_face_input_is_refused_before_the_export(tmp_path, capsys):
    """Issue 26, case 4: `--model hfdir --output hfdir/out` wrote into the input; `--output hfdir
    --overwrite` was refused only after a 9 s export."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "bert"}')
    before = snapshot(hf)
    for out, extra in ((hf / "out", []), (hf, ["--overwrite"])):
        done = in_process(capsys, "compress", "-m", hf, "-o", out, *extra, *SMALL_FLAGS)
        line = one_line_error(done)
        assert "input" in line and str(hf) in line, line
        assert "export" not in done.stderr.lower()
    assert snapshot(hf) == before


def test_restored_previous_output_stops_before_fitting(model_dir, tmp_path, monkeypatch):
    """After a SIGKILL between the fallback's two renames the old output is put back, and the run says so
    and stops, instead of fitting and then failing on the restored directory."""
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    before = snapshot(out)
    aside = output_dir._sibling_box(out).create()
    aside.release()
    os.rename(out, aside.path / "previous")

    def clustered(self, *args, **kwargs):
        raise AssertionError("clustering ran before the refusal")

    monkeypatch.setattr(ProjectiveClustering, "fit", clustered)
    with pytest.raises(ValueError, match="restored .* nothing else was done: run the command again"):
        ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL), overwrite=True)
    assert snapshot(out) == before and leftovers(out) == []
