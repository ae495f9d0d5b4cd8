"""Saying what runs: one line per phase on stderr, and the time each phase took."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


def interactive() -> bool:
    """Whether a person is watching: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Phases:
    """Times named phases for a report; when verbose, announces each on stderr as it starts.

    verbose=None means: when stderr is a terminal.
    """

    def __init__(self, verbose: bool | None = None, prefix: str = "projclust-onnx") -> None:
        self.verbose = interactive() if verbose is None else bool(verbose)
        self.prefix = prefix
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, key: str, text: str, announce: bool = True) -> Iterator[None]:
        if self.verbose and announce:
            print(f"{self.prefix}: {text} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def bar(verbose: bool, desc: str, total: int, unit: str = "step") -> Iterator:
    """A progress bar on stderr with counts and an estimate of the time left; yields tick(n=1, **postfix).

    Silent when not verbose. A phase that ends early (Lloyd settling before max_iter) is
    shown as done at its count."""
    if not verbose:
        yield lambda n=1, **postfix: None
        return
    from tqdm.auto import tqdm

    progress = tqdm(desc=f"  {desc}", total=total, unit=unit, file=sys.stderr)

    def tick(n: int = 1, **postfix) -> None:
        progress.update(n)
        if postfix:
            progress.set_postfix(postfix)

    try:
        yield tick
    finally:
        progress.total = progress.n
        progress.close()
