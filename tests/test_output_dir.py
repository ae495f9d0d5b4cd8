"""No user byte lost: outputs appear whole or not at all, whatever runs beside them or kills them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from tiny_models import embedding_model, write_model_dir

import projclust_onnx.pipeline.output_dir as output_dir
from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.output_dir import recover_stale, staged_directory

SMALL = dict(n_clusters=2, rank=3, n_init=2, anneal_steps=2)
CLI = [sys.executable, "-m", "projclust_onnx.cli"]


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path / "tiny", embedding_model(60, 8)[0]).parent


def stages_of(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_directory_created_during_the_run_is_never_replaced(model_dir, tmp_path, monkeypatch):
    """F1: the user (or a second run) fills the destination while the fit runs: kept, and an error."""
    import projclust_onnx.pipeline.parity as parity

    out = tmp_path / "out"
    reached, filled = threading.Event(), threading.Event()
    real = parity.check_parity

    def slow_check(*args, **kwargs):
        reached.set()
        assert filled.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(parity, "check_parity", slow_check)
    errors = []

    def run():
        try:
            ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
        except ValueError as err:
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    assert reached.wait(60)
    out.mkdir()  # another process creates the destination mid-run
    (out / "notes.txt").write_text("notes")
    filled.set()
    worker.join(60)
    assert len(errors) == 1 and "appeared or was filled while compressing" in str(errors[0])
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "notes"
    assert stages_of(out) == []


def test_empty_directory_created_during_the_run_is_filled(model_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    assert (out / "model.onnx").is_file()


def test_output_inside_the_input_directory_is_refused(model_dir):
    """F2: work_in/sub would be copied along as a companion by every later run."""
    with pytest.raises(ValueError, match="lies inside the input directory"):
        ProjClustCompressor.from_pretrained(model_dir).compress(model_dir / "sub", ProjClustConfig(**SMALL))
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.onnx"]


def test_overwrite_swaps_in_one_step(model_dir, tmp_path, monkeypatch):
    """F5: with --overwrite the destination always holds a complete model: no two-rename window."""
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(output_dir.os, "rename", lambda a, b: renames.append((a, b)) or real_rename(a, b))
    compressor.compress(out, ProjClustConfig(**SMALL, seed=3), overwrite=True)
    assert renames == []  # renameat2(RENAME_EXCHANGE) did it
    assert ProjClustConfig.from_pretrained(out).seed == 3 and stages_of(out) == []


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    assert output_dir._exchange(a, b)
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def dead_box(out):
    """A stage box as a run killed mid-way leaves it: marked for `out`, its lock released."""
    box = output_dir._sibling_box(out).create()
    box.release()
    return box.path


def test_previous_output_set_aside_by_a_crash_is_restored(model_dir, tmp_path):
    """F5 fallback: killed between the two renames, the old output sits in the dead run's box: put back."""
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    aside = dead_box(out)
    os.rename(out, aside / "previous")
    done = recover_stale(out)
    assert done and "restored" in done[0]
    assert (out / "model.onnx").is_file() and not aside.exists()


def test_fallback_without_exchange_restores_on_failure(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    before = (out / "model.onnx").read_bytes()
    monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def failing_second(a, b):
        calls.append(a)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(b))
        real_rename(a, b)

    monkeypatch.setattr(output_dir.os, "rename", failing_second)
    with pytest.raises(OSError):
        compressor.compress(out, ProjClustConfig(**SMALL, seed=5), overwrite=True)
    assert (out / "model.onnx").read_bytes() == before and stages_of(out) == []


def test_sigint_during_stage_creation_leaves_nothing(tmp_path, monkeypatch):
    """F9: a Ctrl-C that lands while the staging directory is made does not leak it."""
    real_mkdir = os.mkdir

    def mkdir_then_interrupt(path, mode=0o777, *args, **kwargs):
        real_mkdir(path, mode, *args, **kwargs)
        # To the main thread itself: a process-wide kill may land on one of ONNX Runtime's worker
        # threads (from earlier tests) and surface in the main thread only some bytecodes later.
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    monkeypatch.setattr(os, "mkdir", mkdir_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(tmp_path / "out"):
            pass
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def slow_model_dir(tmp_path):
    """A table big enough that clustering takes a few seconds: time to signal the run."""
    return write_model_dir(tmp_path / "big", embedding_model(20000, 64, position=False)[0]).parent


def start_compress(model, out):
    return subprocess.Popen([*CLI, "compress", "--model", str(model), "--output", str(out), "--clusters", "5",
                             "--rank", "40", "--n-init", "10", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_stage(out, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stages_of(out):
            return stages_of(out)
        if proc.poll() is not None:
            pytest.fail(f"compress ended before staging: {proc.communicate()}")
        time.sleep(0.01)
    pytest.fail("no staging directory appeared")


def test_sigterm_cleans_up(slow_model_dir, tmp_path):
    """F9: SIGTERM (a service manager, a CI timeout) runs the cleanup like Ctrl-C."""
    out = tmp_path / "out"
    proc = start_compress(slow_model_dir, out)
    wait_for_stage(out, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert not out.exists() and stages_of(out) == []


@pytest.mark.slow  # several CLI processes, 5-8 s: run by CI
def test_sigkill_leftovers_are_removed_by_the_next_run(slow_model_dir, tmp_path):
    """F9: SIGKILL runs no cleanup; the next run removes the dead run's partial stage."""
    out = tmp_path / "out"
    proc = start_compress(slow_model_dir, out)
    left = wait_for_stage(out, proc)
    proc.kill()
    proc.wait(30)
    assert stages_of(out) == left  # the partial output is there...
    small = write_model_dir(tmp_path / "small", embedding_model(60, 8)[0]).parent
    done = subprocess.run([*CLI, "compress", "--model", str(small), "--output", str(out), "--rank", "3",
                           "--clusters", "2", "--quiet"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "left by an interrupted run" in done.stderr
    assert stages_of(out) == [] and (out / "model.onnx").is_file()  # ...and gone after the next run


def test_stages_of_live_runs_are_left_alone(tmp_path):
    out = tmp_path / "out"
    box = output_dir._sibling_box(out).create()  # this process holds its lock
    try:
        assert recover_stale(out) == [] and box.path.exists()
    finally:
        box.remove()


def test_a_live_stage_is_kept_from_another_pid_namespace(tmp_path):
    """Issue 26, case 3: a run in another pid namespace (a container sharing the volume) saw the live run's
    pid as dead and removed its stage. The lock on the marker is what counts, and it crosses namespaces."""
    if subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare --pid (util-linux, and the rights to make a pid namespace)")
    out = tmp_path / "out"
    box = output_dir._sibling_box(out).create()
    try:
        code = ("import pathlib, sys; from projclust_onnx.pipeline.output_dir import recover_stale; "
                "print(recover_stale(pathlib.Path(sys.argv[1])))")
        done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code, str(out)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
        assert box.path.is_dir() and (box.path / output_dir.MARKER_NAME).is_file()
    finally:
        box.remove()


def test_folders_named_like_stages_are_never_removed_or_renamed(model_dir, tmp_path, capsys):
    """Issue 26, case 1: `.out.tmp-2019-12` and `.model.old-2019-12` were deleted (or renamed onto the
    output) by their names alone. Without a run's marker they are the user's: named and left."""
    t = tmp_path / "t"
    (t / ".out.tmp-2019-12").mkdir(parents=True)
    (t / ".out.tmp-2019-12" / "f").write_text("x")
    (t / ".model.old-2019-12-ab").mkdir()
    (t / ".model.old-2019-12-ab" / "NOTES.md").write_text("y")
    fake = t / f".out.tmp-{output_dir.owner_tag()}-0badcafe"  # a stage's name, and even a marker of another tool
    fake.mkdir()
    (fake / output_dir.MARKER_NAME).write_text('{"tool": "other", "destination": "out"}')
    before = {p.relative_to(t).as_posix(): p.read_bytes() for p in t.rglob("*") if p.is_file()}
    done = subprocess.run([*CLI, "compress", "--model", str(model_dir), "--output", str(t / "out"),
                           "--compression", "5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--compression" in done.stderr and "removed" not in done.stderr
    assert "left" in done.stderr and "no marker" in done.stderr
    from cli_run import in_process

    done = in_process(capsys, "compress", "--model", model_dir, "--output", t / "model", "--compression", "5")
    assert done.returncode == 2 and "--compression" in done.stderr and "removed" not in done.stderr
    assert not (t / "model").exists()
    assert {p.relative_to(t).as_posix(): p.read_bytes() for p in t.rglob("*") if p.is_file()} == before


def test_destination_replaced_by_a_symlink_during_the_fit_is_refused_without_leftovers(model_dir, tmp_path,
                                                                                      monkeypatch):
    """Issue 26, case 5: the exchange moved the symlink into the stage's place, where it stayed forever."""
    out, other = tmp_path / "out", tmp_path / "other"
    compressor = ProjClustCompressor.from_pretrained(model_dir)
    compressor.compress(out, ProjClustConfig(**SMALL))
    compressor.compress(other, ProjClustConfig(**SMALL, seed=3))
    real = output_dir._commit

    def swap_in_a_symlink(stage, save_dir, *args):
        import shutil

        shutil.rmtree(save_dir)
        save_dir.symlink_to(other)
        return real(stage, save_dir, *args)

    monkeypatch.setattr(output_dir, "_commit", swap_in_a_symlink)
    with pytest.raises(ValueError, match="replaced by a symbolic link"):
        compressor.compress(out, ProjClustConfig(**SMALL, seed=5), overwrite=True)
    assert out.is_symlink() and ProjClustConfig.from_pretrained(other).seed == 3
    assert stages_of(out) == [] and stages_of(other) == []


def test_written_model_is_readable_by_others(model_dir, tmp_path):
    out = tmp_path / "out"
    ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(**SMALL))
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o777 & ~umask)


def test_a_dead_box_of_another_output_with_the_same_cut_name_is_neither_removed_nor_warned_of(tmp_path, caplog):
    """Box names cut the destination to 100 characters: two outputs sharing that prefix share the name pattern,
    and the marker tells them apart. The other output's box is its own run's to clean, and it is no stranger."""
    prefix = "p" * 100
    mine, theirs = tmp_path / f"{prefix}-mine", tmp_path / f"{prefix}-theirs"
    other = output_dir._sibling_box(theirs).create()
    other.release()  # its run is gone
    with caplog.at_level("WARNING"):
        assert recover_stale(mine) == []
    assert other.path.is_dir() and not [r for r in caplog.records if "left" in r.message]
    assert recover_stale(theirs) == [f"removed {other.path.name}, left by an interrupted run"]
