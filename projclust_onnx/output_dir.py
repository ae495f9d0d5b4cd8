"""Writing a model directory so that no user byte is ever lost.

The output is staged in a hidden directory beside the destination, created before
any heavy work (so an unwritable or full destination fails in seconds), and moved
into place in one step:

- without overwrite, by a rename that fails if the destination was filled meanwhile
  (a directory created by the user or a second run during the fit is never replaced);
- with overwrite, by an atomic exchange (Linux renameat2 RENAME_EXCHANGE), so the
  destination path always holds a complete model, the old one or the new one.

Staging directories carry the writer's process id: a later run removes those whose
process is gone (a SIGKILL, a power cut) and puts back a previous output that an
interrupted two-step replacement had set aside.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

from projclust_onnx.errors import SettingError

logger = logging.getLogger(__name__)

# What a directory must hold for --overwrite to replace it: something this tool or an
# exporter wrote. Anything else (a home directory, a project folder) is refused.
MODEL_MARKERS = ("*.onnx", "projclust_config.json")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class OutputError(ValueError):
    """The output directory cannot be written, or writing it would lose data."""


def check_output_dir(save_dir: Path, overwrite: bool, inputs: list[Path],
                     markers: tuple[str, ...] = MODEL_MARKERS) -> Path:
    """Refuse outputs that overlap an input, an occupied directory without overwrite, and
    (even with overwrite) a directory that holds none of `markers` (no model, no report):
    not an earlier output. Returns the resolved path."""
    save_dir = Path(save_dir).expanduser().resolve()
    for source in inputs:
        source = Path(source).resolve()
        if save_dir == source or save_dir in source.parents:
            raise OutputError(f"output {save_dir} would hold or replace the input {source}; choose another directory")
        if source.is_dir() and source in save_dir.parents:
            raise OutputError(f"output {save_dir} lies inside the input directory {source}; later runs would copy it "
                              "along as part of the model: choose a directory outside the input")
    if save_dir.exists() and not save_dir.is_dir():
        raise OutputError(f"output {save_dir} exists and is not a directory; choose a directory path")
    if save_dir.is_dir():
        held = sorted(p.name for p in save_dir.iterdir())
        if held and not overwrite:
            raise SettingError("overwrite", f"output directory {save_dir} is not empty; pass {{}} to replace it")
        if held and not _holds(save_dir, markers):
            raise OutputError(f"refusing to replace {save_dir}: it holds no {_what(markers)} ({', '.join(held[:3])}"
                              f"{', ...' if len(held) > 3 else ''}), so it is not an earlier output; "
                              "choose a new or empty directory")
    return save_dir


def _holds(directory: Path, markers: tuple[str, ...]) -> bool:
    return any(any(directory.glob(pattern)) for pattern in markers)


def _what(markers: tuple[str, ...]) -> str:
    return "model" if markers == MODEL_MARKERS else " or ".join(markers)


def check_room(directory: Path, needed_bytes: int) -> None:
    """OutputError when the file system of `directory` has clearly less than needed_bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OutputError(f"not enough space for the output in {directory}: about {needed_bytes / 2**20:.0f} MiB "
                          f"needed, {free / 2**20:.0f} MiB free; free some space or choose another --output")


@contextlib.contextmanager
def staged_directory(save_dir: Path, overwrite: bool = False,
                     markers: tuple[str, ...] = MODEL_MARKERS) -> Iterator[Path]:
    """Yield an empty staging directory beside save_dir; on success it becomes save_dir.

    On any error, or a SIGINT/SIGTERM turned into an exception, the stage is removed
    and save_dir is left as it was.
    """
    save_dir = Path(save_dir).expanduser().resolve()
    try:
        save_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output's parent {save_dir.parent}: {err.strerror}") from err
    recover_stale(save_dir)
    stage = None
    try:
        with _signals_held():  # a signal between mkdir and the assignment would leak the stage
            stage = _unique_sibling(save_dir, "tmp")
            try:
                stage.mkdir()
            except OSError as err:
                stage = None
                raise OutputError(f"cannot write in {save_dir.parent}: {err.strerror}; "
                                  "choose a writable --output") from err
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # a server's user must be able to read the model
        yield stage
        with _signals_held():
            _commit(stage, save_dir, overwrite, markers)
    finally:
        if stage is not None and stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _commit(stage: Path, save_dir: Path, overwrite: bool, markers: tuple[str, ...]) -> None:
    if not overwrite or not save_dir.exists():
        try:
            os.rename(stage, save_dir)  # replaces nothing but an empty directory
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise OutputError(f"{save_dir} appeared or was filled while compressing; it was left as it is and "
                                  "nothing was written: choose another --output, or pass --overwrite") from err
            raise
        return
    if save_dir.is_dir() and any(save_dir.iterdir()) and not _holds(save_dir, markers):
        raise OutputError(f"refusing to replace {save_dir}: it no longer holds a {_what(markers)}; "
                          "nothing was written")
    if _exchange(stage, save_dir):
        shutil.rmtree(stage, ignore_errors=True)  # now the previous output
        return
    # No atomic exchange here: set the old output aside, then move the new one in. A crash
    # in between leaves the old one in a .old- sibling, which recover_stale puts back.
    old = _unique_sibling(save_dir, "old")
    os.rename(save_dir, old)
    try:
        os.rename(stage, save_dir)
    except OSError:
        os.rename(old, save_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the kernel or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _unique_sibling(save_dir: Path, kind: str) -> Path:
    return save_dir.parent / f".{save_dir.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _stale_pattern(save_dir: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(save_dir.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$")


def recover_stale(save_dir: Path) -> list[str]:
    """Clean up after runs that died while writing save_dir; returns what was done.

    A staging directory of a dead process is a partial model: removed. A set-aside
    previous output is put back when save_dir is missing, else removed.
    """
    if not save_dir.parent.is_dir():
        return []
    pattern = _stale_pattern(save_dir)
    done = []
    for entry in sorted(save_dir.parent.iterdir()):
        found = pattern.match(entry.name)
        if not found or _alive(int(found.group(2))):
            continue
        if found.group(1) == "old" and not save_dir.exists():
            os.rename(entry, save_dir)
            done.append(f"restored {save_dir} from {entry.name}, set aside by an interrupted --overwrite")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry.name}, left by an interrupted run")
    for line in done:
        logger.warning(line)
    return done


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for a few syscalls; they are delivered right after."""
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit(143) so that cleanup scopes run (main thread only)."""
    def raise_exit(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, raise_exit)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file by rename, so a reader never sees half of it."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
