"""Running the CLI as a user does (a fresh process) and reading its one error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "projclust_onnx.cli"]


def cli(*args, cwd=None, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI's main() run in this process, as a CompletedProcess: for a check that patches the product (a fit
    that must not run, a session that must not open), or for many quick refusals."""
    from projclust_onnx.cli.main import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as done:  # argparse's usage errors
        code = done.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["projclust-onnx", *map(str, args)], code, out, err)


def one_line_error(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single stderr line of a refused run (no traceback, nothing else said)."""
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    """A refused or interrupted run left no output directory and no stage (`.NAME.tmp-*`) beside it."""
    assert not os.path.lexists(out), f"{out} was written"
    left = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))
    assert not left, f"left beside the output: {left}"
