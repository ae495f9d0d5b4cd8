"""Saying what runs: one line per phase on stderr, and the time each phase took.

On a terminal a phase is announced when it starts and its long steps draw progress bars. When
stderr is a file or a pipe (a CI log, `2> log`), bars would leave redraws and cursor escapes:
each phase then writes one line when it starts and one when it ends, with its counts and seconds.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator


def interactive() -> bool:
    """Whether a person is watching: stderr is a terminal, or this runs in a Jupyter kernel (where tqdm draws
    a widget)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# The counts of the bars that ran quietly inside the phase now running (innermost last).
_counts: list[list[str]] = []


class Phases:
    """Times named phases for a report; when verbose, announces each on stderr as it starts (and, off a
    terminal, says when it ends).

    verbose=None means: when stderr is a terminal.
    """

    def __init__(self, verbose: bool | None = None, prefix: str = "projclust-onnx") -> None:
        self.verbose = interactive() if verbose is None else bool(verbose)
        self.prefix = prefix
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str, text: str, announce: bool = True) -> Iterator[None]:
        say = self.verbose and announce
        if say:
            print(f"{self.prefix}: {text} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        _counts.append([])
        try:
            yield
        finally:
            counts = _counts.pop()
            seconds = time.perf_counter() - start
            self.timings[key] = self.timings.get(key, 0.0) + seconds
            if say and not interactive():
                done = f"{', '.join(counts)}; " if counts else ""
                print(f"{self.prefix}: {text}: done ({done}{seconds:.1f} s)", file=sys.stderr, flush=True)


class _QuietBar:
    """tqdm's calls, counted without drawing; close() adds the count to the running phase's end line."""

    def __init__(self, iterable: Iterable | None, desc: str, unit: str) -> None:
        self.iterable, self.desc, self.unit, self.n, self.total = iterable, desc.strip(), unit, 0, None

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    set_postfix_str = set_postfix

    def close(self) -> None:
        if self.n:
            units = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s")) else "s")
            n = f"{self.n / 2**20:.1f} MiB" if self.unit == "B" else f"{self.n:,} {units}"
            if _counts:  # said in the running phase's end line
                _counts[-1].append(f"{self.desc}: {n}")
            else:  # no phase to say it: one line of its own
                print(f"  {self.desc}: {n}", file=sys.stderr, flush=True)
        self.n = 0


def new_bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "step",
            unit_scale: bool = False):
    """A tqdm bar on a terminal; elsewhere a silent counter whose count the phase's end line reports."""
    if not interactive():
        return _QuietBar(iterable, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=sys.stderr)


@contextlib.contextmanager
def bar(verbose: bool, desc: str, total: int, unit: str = "step") -> Iterator:
    """A progress bar on stderr with counts and an estimate of the time left; yields tick(n=1, **postfix).

    Silent when not verbose. A phase that ends early (Lloyd settling before max_iter) is
    shown as done at its count."""
    if not verbose:
        yield lambda n=1, **postfix: None
        return
    progress = new_bar(desc=f"  {desc}", total=total, unit=unit)

    def tick(n: int = 1, **postfix) -> None:
        progress.update(n)
        if postfix:
            progress.set_postfix(postfix)

    try:
        yield tick
    finally:
        progress.total = progress.n
        progress.close()


def show(text: str) -> None:
    """Print a run's summary; where stdout cannot take it (a full disk, a closed pipe), say so in one line on
    stderr instead of failing a run whose output is already written."""
    try:
        print(text, flush=True)
    except (OSError, UnicodeError) as err:
        with contextlib.suppress(OSError):  # later flushes (at exit) go nowhere instead of failing again
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
        print(f"projclust-onnx: the run finished and wrote its output, but its summary could not be printed "
              f"({getattr(err, 'strerror', None) or err})", file=sys.stderr)
