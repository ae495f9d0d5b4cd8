"""Wall time, CPU time and peak memory of one codebook fit (storage/codebook.py), per table and size.

The tables are bench_scale.py's: MiniLM's own (30522 x 384) and 250000 x 384 made of MiniLM's rows
resampled and mixed. At each ratio, each storage the chooser would try (CodebookStorage.for_budget:
with and without the rotation) is fitted once, with uniform weights, in a child process of its own
so that its peak RSS (from wait4) is its own; the reconstruction error is printed beside it.

    python benchmarks/bench_codebook_fit.py [--shapes 30522x384 250000x384] [--ratios 16 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import append_results, markdown_table

HERE = Path(__file__).resolve().parent


def fit_once(shape: str, ratio: float, index: int) -> dict:
    """In this process: build the table, fit the index-th storage for the budget; a dict of figures."""
    import numpy as np
    from bench_scale import minilm_table, synthetic_table

    from projclust_onnx.storage.codebook import CodebookStorage

    n, d = map(int, shape.split("x"))
    table = minilm_table() if (n, d) == (30522, 384) else synthetic_table(n, d)[0]
    storages = CodebookStorage.for_budget(n, d, n * d * 4 / ratio)
    storage = storages[index]
    cpu0, start = time.process_time(), time.perf_counter()
    stored = storage.encode(table)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    error = float(((stored.dequantize() - table) ** 2).sum() / (table.astype(np.float64) ** 2).sum())
    return {"shape": shape, "ratio": ratio, "storage": storage.label, "bytes": stored.nbytes, "wall_s": wall,
            "cpu_s": cpu, "relative_error": error, "n_storages": len(storages)}


def run_child(shape: str, ratio: float, index: int) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--child", shape, str(ratio), str(index)],
                            stdout=subprocess.PIPE, cwd=HERE, text=True)
    out = proc.stdout.read()  # before waiting: a full pipe would block the child
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"the fit of {shape} at {ratio}x (storage {index}) failed")
    row = json.loads(out.strip().splitlines()[-1])
    row["peak_rss_mib"] = usage.ru_maxrss / 1024
    return row


def _table_mib(shape: str) -> float:
    n, d = map(int, shape.split("x"))
    return n * d * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["30522x384", "250000x384"])
    parser.add_argument("--ratios", type=float, nargs="+", default=[16, 32])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        shape, ratio, index = args.child
        print(json.dumps(fit_once(shape, float(ratio), int(index))))
        return
    from projclust_onnx.storage.codebook import CodebookStorage

    rows = []
    for shape in args.shapes:
        n, d = map(int, shape.split("x"))
        for ratio in args.ratios:
            for index in range(len(CodebookStorage.for_budget(n, d, n * d * 4 / ratio))):
                rows.append(run_child(shape, ratio, index))
                print(rows[-1], flush=True)
    table = markdown_table(
        ["table", "ratio", "storage", "bytes", "wall s", "CPU s", "peak RSS MiB", "table MiB", "relative error"],
        [[r["shape"], f"{r['ratio']:g}x", r["storage"], f"{r['bytes']:,}", f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}",
          f"{r['peak_rss_mib']:.0f}", f"{_table_mib(r['shape']):.0f}",
          f"{r['relative_error']:.4f}"] for r in rows])
    print(table)
    append_results("Codebook fit: time and peak memory per table and size",
                   "One fit per storage the chooser tries at that ratio, uniform weights, each in its own process "
                   "(peak RSS includes the interpreter, torch and the table).\n\n" + table)


if __name__ == "__main__":
    main()
