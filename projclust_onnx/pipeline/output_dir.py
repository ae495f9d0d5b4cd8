"""Writing an output directory so that no user byte is ever lost.

The output is staged in a hidden directory beside the destination, created before
any heavy work (so an unwritable or full destination fails in seconds), and moved
into place in one step:

- without overwrite, by a rename that fails if the destination was filled meanwhile
  (a directory created by the user or a second run during the fit is never replaced);
- with overwrite, by an atomic exchange (Linux renameat2 RENAME_EXCHANGE), so the
  destination path always holds a complete output, the old one or the new one.

Ownership: every output carries `projclust_manifest.json`, naming this tool and every
file it wrote. `overwrite` replaces a directory only when everything in it is listed
there: a file the user added, a dotfile, a `.git`, a directory of another tool is never
deleted. The current directory (and its ancestors) and home directories are never
outputs at all.

Leftovers: every directory this tool creates outside the output (the stage beside it, a
temporary export folder in TMPDIR) is a box holding a marker file, `.projclust-run`, that
names the tool, the kind of box and the destination, and the running process holds an
exclusive lock (flock) on that marker until it ends. A later run removes a box only when its
marker is there, names that destination, and its lock can be taken: the run that made it is
gone (a SIGKILL, a power cut), whatever pid namespace or container it ran in. A directory
whose name merely looks like a stage is never touched: it is named and left alone. A
previous output that an interrupted two-step replacement had set aside inside a box is put
back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

from projclust_onnx.common.errors import SettingError

logger = logging.getLogger(__name__)

TOOL = "projclust-onnx"
MANIFEST_NAME = "projclust_manifest.json"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Temporary folders this tool makes in TMPDIR, named by temp_dir(): removed once their process is gone.
_TEMP_KINDS = ("export", "finetune")


class OutputError(ValueError):
    """The output directory cannot be written, or writing it would lose data."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, carrying what is on disk now (`outcome`) and the exit code a shell expects."""

    def __init__(self, signum: int, outcome: str = "no partial output was left behind") -> None:
        super().__init__(outcome)
        self.signum, self.outcome, self.exit_code = signum, outcome, 128 + signum


# ---------------------------------------------------------------------- which directories may be written
def resolved(save_dir: Path) -> Path:
    """The absolute, symlink-free output path; OutputError for a symbolic link that loops."""
    try:
        return Path(save_dir).expanduser().resolve()
    except (RuntimeError, OSError) as err:  # RuntimeError: Python < 3.13's "Symlink loop"
        raise OutputError(f"output {save_dir} is a symbolic link that loops (or passes through one); remove the "
                          "link or choose another output directory") from err


def check_output_dir(save_dir: Path, overwrite: bool, inputs: list[Path], kind: str = "model") -> Path:
    """Refuse outputs that overlap an input, the current or a home directory, a mount point, an
    occupied directory without overwrite, and (even with overwrite) a directory holding anything
    this tool did not write. Returns the resolved path."""
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite={overwrite!r} must be True or False")
    save_dir = resolved(save_dir)
    for source in inputs:
        source = Path(source).resolve()
        if save_dir == source or save_dir in source.parents:
            raise OutputError(f"output {save_dir} would hold or replace the input {source}; choose another directory")
        if source.is_dir() and source in save_dir.parents:
            raise OutputError(f"output {save_dir} lies inside the input directory {source}; later runs would copy it "
                              "along as part of the model: choose a directory outside the input")
    _check_not_precious(save_dir)
    if save_dir.exists() and not save_dir.is_dir():
        raise OutputError(f"output {save_dir} exists and is not a directory; choose a directory path")
    if save_dir.is_dir():
        if os.path.ismount(save_dir):
            raise OutputError(f"output {save_dir} is a mount point, which the finished output cannot be moved onto "
                              f"in one step; give a directory inside it, e.g. {save_dir / 'model'}")
        if any(save_dir.iterdir()):
            check_replaceable(save_dir, kind)  # with or without overwrite: advising it would not help
            if not overwrite:
                raise SettingError("overwrite", f"output directory {save_dir} holds an earlier output; pass {{}} "
                                   "to replace it, or choose another directory")
    return save_dir


def _check_not_precious(save_dir: Path) -> None:
    """The current directory, its ancestors and home directories are never outputs: replacing one
    would pull the ground from under the user's shell or delete their files."""
    cwd = Path.cwd().resolve()
    if save_dir == cwd or save_dir in cwd.parents:
        what = "the current directory" if save_dir == cwd else "an ancestor of the current directory"
        raise OutputError(f"output {save_dir} is {what}; write into a new subdirectory instead, e.g. "
                          f"{cwd / 'projclust-output'}")
    if save_dir in _home_directories(save_dir):
        raise OutputError(f"output {save_dir} is a home directory; write into a new subdirectory instead, e.g. "
                          f"{save_dir / 'projclust-output'}")


def _home_directories(save_dir: Path) -> set[Path]:
    """This user's home, and the home of the directory's owner (one lookup: enumerating every user
    can take minutes on a machine that asks a directory service)."""
    homes = {Path.home().resolve()}
    with contextlib.suppress(ImportError, KeyError, OSError):
        import pwd

        homes.add(Path(pwd.getpwuid(save_dir.stat().st_uid).pw_dir).resolve())
    return homes


def check_replaceable(directory: Path, kind: str = "model") -> None:
    """OutputError unless `directory` is an earlier output of the same kind (a model, a benchmark report)
    and everything in it is listed in its manifest."""
    foreign, reason = foreign_entries(directory, kind)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"refusing to replace {directory}: {reason} ({shown}); nothing was changed. Choose a new "
                          "output directory, or move those files out of it first")


def foreign_entries(directory: Path, kind: str = "model") -> tuple[list[str], str]:
    """The entries of `directory` (relative paths) that this tool did not write as an output of `kind`, and why."""
    listed, found_kind = _manifest_files(directory)
    if listed is None:
        return sorted(p.name for p in directory.iterdir()), (f"it holds no {MANIFEST_NAME} of {TOOL}, so it is not "
                                                               "an earlier output of this tool")
    if found_kind != kind:
        return sorted(p.name for p in directory.iterdir()), (f"it holds an earlier {found_kind} output of {TOOL}, "
                                                               f"not a {kind} output")
    allowed_dirs = {parent for name in listed for parent in Path(name).parents if parent != Path(".")}
    foreign = []
    for root, dirs, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        for name in sorted(dirs):
            rel = rel_root / name
            if rel not in allowed_dirs or (Path(root) / name).is_symlink():
                foreign.append(f"{rel.as_posix()}/")
        dirs[:] = [d for d in dirs if rel_root / d in allowed_dirs and not (Path(root) / d).is_symlink()]
        for name in sorted(files):
            rel = (rel_root / name).as_posix()
            if rel != MANIFEST_NAME and rel not in listed:
                foreign.append(rel)
    return sorted(foreign), "it holds files this tool did not write"


def _manifest_files(directory: Path) -> tuple[set[str] | None, str]:
    """The files the manifest in `directory` lists and the output's kind; (None, "") when there is no valid
    manifest of this tool."""
    try:
        data = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None, ""
    files = data.get("files") if isinstance(data, dict) and data.get("tool") == TOOL else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None, ""
    kind = data.get("kind", "model")
    return {f for f in files if not f.startswith(("/", "../")) and
            not any(p.startswith(".") for p in f.split("/"))}, kind if isinstance(kind, str) else ""


def write_manifest(directory: Path, kind: str) -> Path:
    """List every file under `directory` as written by this tool (`kind`: model, benchmark, ...)."""
    from projclust_onnx import __version__

    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.name != MANIFEST_NAME)
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps({"tool": TOOL, "version": __version__, "kind": kind, "files": files}, indent=2) + "\n")
    return path


def check_room(directory: Path, needed_bytes: int, what: str = "the output") -> None:
    """OutputError when the file system holding `directory` (or its nearest existing ancestor) has
    clearly less than needed_bytes free."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise OutputError(f"not enough space for {what} on the file system of {existing}: about "
                          f"{needed_bytes / 2**20:.0f} MiB needed, {free / 2**20:.0f} MiB free; free some space or "
                          "choose another output directory")


@contextlib.contextmanager
def oserrors_name(path: Path) -> Iterator[None]:
    """Give an OSError that names no file (a full disk inside a library's write) the path being written."""
    try:
        yield
    except OSError as err:
        if err.filename is not None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


# ---------------------------------------------------------------------- staging and placing
@contextlib.contextmanager
def staged_directory(save_dir: Path, overwrite: bool = False, kind: str = "model") -> Iterator[Path]:
    """Yield an empty staging directory beside save_dir; on success it becomes save_dir, with a manifest.

    The stage lives in a Box (a marked, locked directory) so that only this run, or a later one
    once this run is gone, ever removes it. On any error, or a SIGINT/SIGTERM, the box is removed
    and save_dir is left as it was. A signal that arrives while the output is being placed is
    held until the move is done, then raised as Interrupted saying which output is in place.
    """
    save_dir = resolved(save_dir)
    try:
        save_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output's parent {save_dir.parent}: {err.strerror}") from err
    clean_leftovers(save_dir)
    box = None
    try:
        with signals_held():  # a signal between mkdir and the assignment would leak the box
            try:
                box = _sibling_box(save_dir).create()
            except OSError as err:
                raise OutputError(f"cannot write in {save_dir.parent}: {err.strerror}; "
                                  "choose a writable output directory") from err
        stage = box.path / _PAYLOAD
        umask = os.umask(0)
        os.umask(umask)
        stage.mkdir(mode=0o777 & ~umask)
        os.chmod(stage, 0o777 & ~umask)  # a server's user must be able to read the model
        yield stage
        write_manifest(stage, kind)
        with signals_held(f"{save_dir} holds the new output"):
            _commit(stage, save_dir, overwrite, box, kind)
    finally:
        if box is not None:
            box.remove()


def _commit(stage: Path, save_dir: Path, overwrite: bool, box: Box, kind: str) -> None:
    if save_dir.is_symlink():
        raise OutputError(f"{save_dir} was replaced by a symbolic link while compressing; it was left as it is and "
                          "nothing was written: choose another output directory")
    if not overwrite or not save_dir.exists():
        try:
            os.rename(stage, save_dir)  # replaces nothing but an empty directory
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise OutputError(f"{save_dir} appeared or was filled while compressing; it was left as it is and "
                                  "nothing was written: choose another output directory, or pass overwrite") from err
            raise OSError(err.errno, f"cannot move the finished output into place ({err.strerror})",
                          str(save_dir)) from err
        return
    check_replaceable(save_dir, kind)  # files may have been added while the fit ran
    if _exchange(stage, save_dir):
        # `stage` now holds the previous output. Anything added to it between the check and the
        # exchange is not ours to delete: swap back and refuse.
        if foreign_entries(stage, kind)[0]:
            _exchange(stage, save_dir)
            check_replaceable(save_dir, kind)
        return  # the box, and the previous output in it, go with the box
    # No atomic exchange here: set the old output aside inside the box, then move the new one in. A
    # crash in between leaves the old one in the box, which recover_stale puts back.
    previous = box.path / _PREVIOUS
    os.rename(save_dir, previous)
    try:
        os.rename(stage, save_dir)
    except OSError:
        os.rename(previous, save_dir)
        raise
    if foreign_entries(previous, kind)[0]:  # filled between the check and the first rename: put it back
        os.rename(save_dir, stage)
        os.rename(previous, save_dir)
        check_replaceable(save_dir, kind)


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


# ---------------------------------------------------------------------- boxes: what a run creates beside the output
MARKER_NAME = ".projclust-run"
_PAYLOAD = "output"  # a stage's box: the output being written
_PREVIOUS = "previous"  # a stage's box: a previous output set aside by the two-step replacement


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return "0" * 8


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_tag() -> str:
    """`PID-START-BOOT`: names this process in a box's name, for a person reading the directory listing
    (liveness is the marker's lock, never this tag)."""
    return f"{os.getpid()}-{_start_time(os.getpid()) or 0}-{_boot_id()}"


class Box:
    """A directory this run created, with a marker naming it and an exclusive lock on the marker held
    for as long as the run lives (or until release()). Other runs see the lock across pid namespaces."""

    def __init__(self, path: Path, kind: str, destination: str) -> None:
        self.path, self.kind, self.destination = Path(path), kind, destination
        self._fd: int | None = None

    def create(self) -> Box:
        """Make the directory and its locked marker; on failure, remove what this call made, nothing else."""
        self.path.mkdir()
        marker = self.path / MARKER_NAME
        fd = None
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, json.dumps({"tool": TOOL, "kind": self.kind, "destination": self.destination,
                                     "owner": owner_tag()}).encode())
        except BaseException:
            if fd is not None:
                os.close(fd)
                marker.unlink(missing_ok=True)
            self.path.rmdir()
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Give up the lock (the box then counts as a dead run's)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Remove the box and all it holds, then release the lock."""
        try:
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.release()


def _sibling_box(save_dir: Path) -> Box:
    # The destination's name is cut to keep the box's name within NAME_MAX; the marker holds it whole.
    name = f".{save_dir.name[:100]}.tmp-{owner_tag()}-{secrets.token_hex(4)}"
    return Box(save_dir.parent / name, "stage", save_dir.name)


class TempBox:
    """A working folder in TMPDIR inside a box (`name` is the folder, like TemporaryDirectory's), removed
    on cleanup(), at interpreter exit, or by a later run once this process is gone."""

    def __init__(self, kind: str) -> None:
        root = Path(tempfile.gettempdir())
        self._box = Box(root / f"projclust-{kind}-{owner_tag()}-{secrets.token_hex(4)}", kind, kind).create()
        work = self._box.path / "work"
        work.mkdir()
        self.name = str(work)
        self._finalizer = weakref.finalize(self, self._box.remove)

    def cleanup(self) -> None:
        self._finalizer()

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc) -> None:
        self.cleanup()


def temp_dir(kind: str) -> TempBox:
    """A working folder in TMPDIR that a later run removes after a SIGKILL (see TempBox)."""
    assert kind in _TEMP_KINDS
    return TempBox(kind)


def _box_state(entry: Path, destination: str) -> tuple[str, int | None]:
    """('dead', fd holding the lock) for a box of this tool for `destination` whose run has ended,
    ('live', None) for one whose run holds its lock, ('other', None) for a box of this tool for another
    destination (names cut to 100 characters can share a prefix), ('foreign', None) for anything else."""
    if entry.is_symlink() or not entry.is_dir():
        return "foreign", None
    try:
        fd = os.open(entry / MARKER_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return "foreign", None
    try:
        data = json.loads(os.read(fd, 65536) or b"null")
        if not isinstance(data, dict) or data.get("tool") != TOOL:
            os.close(fd)
            return "foreign", None
        if data.get("destination") != destination:
            os.close(fd)
            return "other", None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return "live", None
    except (OSError, ValueError):
        os.close(fd)
        return "foreign", None
    return "dead", fd


def _dead_boxes(parent: Path, pattern: re.Pattern, destination: str) -> Iterator[tuple[Path, int]]:
    """The boxes under `parent` whose names match `pattern` and whose runs have ended, each with its lock
    held; entries that match the name but are not this tool's boxes are named in a warning and left."""
    with contextlib.suppress(OSError):
        for entry in sorted(parent.iterdir()):
            if not pattern.match(entry.name):
                continue
            state, fd = _box_state(entry, destination)
            if state == "foreign":
                logger.warning("left %s as it is: its name looks like a stage of %s, but it holds no marker of a "
                               "run of this tool", entry, TOOL)
            elif state == "dead":
                yield entry, fd


def recover_stale(save_dir: Path) -> list[str]:
    """Clean up after runs that died while writing save_dir; returns what was done.

    A dead run's box is removed; a previous output it had set aside is put back first when save_dir is
    missing.
    """
    if not save_dir.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(save_dir.name[:100])}\.(tmp|old)-")
    done = []
    for entry, fd in _dead_boxes(save_dir.parent, pattern, save_dir.name):
        try:
            previous = entry / _PREVIOUS
            if previous.is_dir() and not previous.is_symlink() and not os.path.lexists(save_dir):
                os.rename(previous, save_dir)
                done.append(f"restored {save_dir} from {entry.name}, set aside by an interrupted overwrite")
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry.name}, left by an interrupted run")
        finally:
            os.close(fd)
    for line in done:
        logger.warning(line)
    return done


def remove_dead_temp_dirs() -> list[str]:
    """Remove this tool's folders in TMPDIR whose process is gone (an export killed mid-way)."""
    root = Path(tempfile.gettempdir())
    done = []
    for kind in _TEMP_KINDS:
        for entry, fd in _dead_boxes(root, re.compile(rf"projclust-{kind}-\d+-"), kind):
            try:
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                os.close(fd)
            done.append(f"removed {entry}, left by an interrupted run")
    for line in done:
        logger.info(line)
    return done


def clean_leftovers(save_dir: Path | None) -> None:
    """What every run does first: remove dead runs' stages and temporary folders. A previous output
    that an interrupted replacement had set aside is put back, and the run stops there, saying so."""
    remove_dead_temp_dirs()
    if save_dir is None:
        return
    try:
        where = resolved(save_dir)
    except OutputError:  # a symlink loop: the output check names it
        return
    restored = [line for line in recover_stale(where) if line.startswith("restored")]
    if restored:
        raise OutputError(f"{restored[0]}; nothing else was done: run the command again to write a new output")


# ---------------------------------------------------------------------- signals
@contextlib.contextmanager
def signals_held(outcome: str = "no partial output was left behind") -> Iterator[None]:
    """Hold SIGINT and SIGTERM for a few system calls, in every thread, and raise them afterwards as
    Interrupted(signum, outcome): `outcome` says what is on disk once the block has completed.

    The signal mask only covers this thread (ONNX Runtime's and torch's workers may take a
    process signal), so the Python-level handlers, which always run in the main thread, are
    swapped for ones that only record it."""
    pending: list[int] = []
    previous_handlers = {}
    with contextlib.suppress(ValueError):  # ValueError: not the main thread, where handlers cannot change
        for signum in _SIGNALS:
            previous_handlers[signum] = signal.signal(signum, lambda s, frame: pending.append(s))
    try:
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    except (AttributeError, ValueError, OSError):
        previous_mask = None
    try:
        yield
    finally:
        if previous_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)  # a held signal is handled here: recorded
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    if pending:
        raise Interrupted(pending[0], outcome)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into Interrupted(SIGTERM), like Ctrl-C, so that cleanup scopes run (main thread only)."""
    def interrupt(signum, frame):
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
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


def add_to_manifest(directory: Path, names: list[str]) -> None:
    """Record files written into a finished output (a fine-tuning report) as this tool's own."""
    path = Path(directory) / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["files"] = sorted(set(data["files"]) | set(names))
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
