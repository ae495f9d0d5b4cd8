"""What every benchmark script shares: the machine's description and appending to RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    """CPU, core count, memory, GPU (if torch sees one) and library versions, in one line."""
    parts = [platform.machine(), f"{os.cpu_count()} cores"]
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"{pages / 2**30:.0f} GiB")
    except (ValueError, OSError):
        pass
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        parts.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(title: str, body: str) -> None:
    """Print a section and append it to benchmarks/RESULTS.md with machine, date and command."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## {title}\n\n- date: {stamp}\n- machine: {machine()}\n- command: `{command}`\n\n"
               f"{body.strip()}\n")
    print(section)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach section is appended by a script in benchmarks/.\n")
    with RESULTS.open("a") as f:
        f.write(section)


_SESSION_MEMORY = r"""
import json, sys, numpy as np, onnxruntime as ort
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
base, held = status("VmHWM:"), status("VmRSS:")
options = ort.SessionOptions()
options.add_session_config_entry("session.disable_prepacking", sys.argv[2])
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, {name: np.full(shape, fill, dtype) for name, (shape, dtype, fill) in json.loads(sys.argv[3]).items()})
print(json.dumps([status("VmHWM:") - base, status("VmRSS:") - held]))
"""


def session_memory_mb(path: Path, feeds: dict, prepacking: bool = True) -> tuple[float, float]:
    """Growth of peak RSS, and of the RSS held after it, for creating a session on `path` and one run, in a process
    of its own (ONNX Runtime's constant folding at session start can peak above what the session then holds).
    `feeds`: {input name: (shape, dtype name, fill value)}; `prepacking`: ONNX Runtime's weight prepacking."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, "-c", _SESSION_MEMORY, str(path), "0" if prepacking else "1",
                           json.dumps(feeds)], capture_output=True, text=True, timeout=600, check=True)
    peak, held = json.loads(done.stdout.strip().splitlines()[-1])
    return peak, held
