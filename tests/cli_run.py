"""Running the CLI as a user does (a fresh process) and reading its one error line."""

from __future__ import annotations

import os
import subprocess
import sys

CLI = [sys.executable, "-m", "projclust_onnx.cli"]


def cli(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def one_line_error(done: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single stderr line of a refused run (no traceback, nothing else said)."""
    assert done.returncode == code, (done.stdout, done.stderr)
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]
