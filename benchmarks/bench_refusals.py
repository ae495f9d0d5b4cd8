"""How long a user waits for a refusal that does not depend on the fit, on the bundled MiniLM, through the CLI.

Each refusal runs `projclust-onnx compress` in a fresh process (imports included, as a user
sees it) with a large calibration file, which must not be read before the refusal. Prints
wall seconds and the one error line per case, and appends them to RESULTS.md.

    python benchmarks/bench_refusals.py [--calibration-mb 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_results, markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-mb", type=float, default=20.0)
    args = parser.parse_args()

    from projclust_onnx.pipeline.bundled import bundled_model_path
    from projclust_onnx.pipeline.compressor import export_onnx

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-refusals-") as tmp:
        tmp = Path(tmp)
        export_onnx(str(bundled_model_path()), tmp / "onnx")
        texts = tmp / "calibration.txt"
        line = "The tea arrived quickly, tasted wonderful and the price was fair.\n"
        texts.write_text(line * int(args.calibration_mb * 2**20 / len(line)))
        occupied = tmp / "occupied"
        occupied.mkdir()
        (occupied / "notes.txt").write_text("mine")
        cases = {
            "--device cuda (no GPU)": ["--device", "cuda"],
            "--target-ratio 1000": ["--target-ratio", "1000"],
            "missing second calibration file": ["--calibration-text", str(texts), str(tmp / "missing.txt")],
            "--overwrite on a folder it did not write": ["--output", str(occupied), "--overwrite"],
            "--n-init 0": ["--n-init", "0"],
        }
        rows = []
        for name, extra in cases.items():
            command = [sys.executable, "-m", "projclust_onnx.cli.main", "compress", "--model", str(tmp / "onnx"),
                       "--output", str(tmp / "out"), "--calibration-text", str(texts), "-q", *extra]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
            seconds = time.perf_counter() - start
            error = [ln for ln in done.stderr.splitlines() if "error:" in ln]
            rows.append([name, done.returncode, round(seconds, 1), (error[0] if error else done.stderr)[:140]])
    body = (f"Calibration file of {args.calibration_mb:g} MB in every case; each a fresh `projclust-onnx compress` "
            "process on MiniLM's Optimum export (imports, reading and checking the model included).\n\n"
            + markdown_table(["refusal", "exit", "wall s", "the one error line (cut at 140 characters)"], rows))
    append_results("Refusals before the fit, MiniLM, with a large calibration file", body)


if __name__ == "__main__":
    main()
