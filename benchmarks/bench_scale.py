"""Wall time, CPU time and peak memory of `projclust-onnx compress` on word tables of vocabulary scale.

Each shape is written as a one-Gather ONNX model (input_ids -> Gather(table) -> output), so
that what is timed is the fit, the rewrite and the ONNX Runtime parity check, not an export.
The tables: MiniLM's own (30522 x 384); for 250000 x 384, MiniLM's rows resampled and mixed
(each row a random mix of two MiniLM rows plus 5% noise, so the spectrum and the cluster
structure stay those of a real table); for wider tables, Gaussian rows with MiniLM's singular
value profile stretched to d. Every command runs as its own process; its CPU time and peak RSS
come from wait4. The bound of issue 18 is the model file plus three times the table.

    python benchmarks/bench_scale.py [--shapes 30522x384 250000x384 151936x896 262144x2304]
                                     [--runs clusters svd ratio] [--clusters 5] [--timeout 3600] [--busy]

--busy runs every command beside one process that keeps a core busy (a spinning Python loop), as
on a shared machine; the table says which.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import append_results, markdown_table

RUNS = {
    "clusters": ["--compression", "0.4", "--clusters", "{k}"],
    "svd": ["--compression", "0.4", "--method", "svd"],
    "ratio": ["--target-ratio", "10"],
}


def minilm_table() -> np.ndarray:
    from projclust_onnx.pipeline.bundled import bundled_word_embedding

    return np.asarray(bundled_word_embedding(), dtype=np.float32)


def synthetic_table(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """A table of shape (n, d) with MiniLM's structure, and how it was made."""
    rng = np.random.default_rng(seed)
    E = minilm_table()
    if d == E.shape[1]:
        if n == len(E):
            return E, "MiniLM's table"
        out = np.empty((n, d), dtype=np.float32)
        for start in range(0, n, 1 << 16):
            m = min(1 << 16, n - start)
            a, b = rng.integers(0, len(E), m), rng.integers(0, len(E), m)
            mix = rng.uniform(0.6, 1.0, (m, 1)).astype(np.float32)
            out[start:start + m] = mix * E[a] + (1 - mix) * E[b]
            out[start:start + m] += 0.05 * E.std() * rng.standard_normal((m, d), dtype=np.float32)
        return out, "MiniLM rows resampled: mix of two random rows (weight 0.6-1) + 5% Gaussian noise"
    s = np.linalg.svd(E, compute_uv=False)
    profile = np.interp(np.linspace(0, len(s) - 1, d), np.arange(len(s)), s / s[0]).astype(np.float32)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    q = q.astype(np.float32) * profile[:, None]
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1 << 15):
        m = min(1 << 15, n - start)
        out[start:start + m] = rng.standard_normal((m, d), dtype=np.float32) @ q
    return out * (E.std() / out.std()), "Gaussian rows with MiniLM's singular value profile stretched to d"


def write_model(table: np.ndarray, directory: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embeddings.word_embeddings.weight", "input_ids"], ["hidden"], name="lookup"),
         helper.make_node("Relu", ["hidden"], ["last_hidden_state"], name="relu")],
        "scale", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", table.shape[1]])],
        [numpy_helper.from_array(table, "embeddings.word_embeddings.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = directory / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx_data", size_threshold=0)
    (directory / "config.json").write_text('{"model_type": "bert"}\n')
    return path


def measure(args: list[str], timeout: float, log: Path) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS bytes, exit code) of one process."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # wait4, not Popen.wait: it returns the child's rusage
        timer.cancel()
    wall = time.perf_counter() - start
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def child(argv: list[str], peak_file: str) -> int:
    """Run `projclust-onnx compress` in this process and write the peak RSS of its fit phase (the fit or
    the chooser) to peak_file: the kernel's high-water mark is reset as the fit starts (clear_refs 5) and
    read as it ends."""
    from projclust_onnx.cli import main as cli
    from projclust_onnx.pipeline import compressor

    peaks = []

    def watched(fn):
        def run(*args, **kwargs):
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass  # then the figure is the process's peak up to the end of the fit
            try:
                return fn(*args, **kwargs)
            finally:
                status = Path("/proc/self/status").read_text()
                peaks.append(int(next(line.split()[1] for line in status.splitlines()
                                      if line.startswith("VmHWM:"))) * 1024)
        return run

    compressor.fit_factorization = watched(compressor.fit_factorization)
    compressor.ProjClustCompressor._choose = staticmethod(watched(compressor.ProjClustCompressor._choose))
    code = cli.main(argv)
    Path(peak_file).write_text(str(max(peaks, default=0)))
    return code


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[3:], sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["30522x384", "250000x384"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--busy", action="store_true", help="beside one process spinning on a core")
    args = parser.parse_args()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        run_all(args)
    finally:
        if busy is not None:
            busy.kill()


def run_all(args: argparse.Namespace) -> None:
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        # What the interpreter, torch, onnxruntime and transformers hold before any table is read.
        imports = [sys.executable, "-c", ("import onnxruntime, onnx_ir, transformers, "
                   "projclust_onnx.pipeline.compressor, projclust_onnx.cli.main, "
                    "projclust_onnx.pipeline.parity, projclust_onnx.passes")]
        base_rss = measure(imports, args.timeout, Path(tmp) / "imports.log")[2]
        notes.append(f"- peak RSS of the imports alone: {base_rss / 2**30:.2f} GiB; 'fit peak' is the high-water "
                     "mark while the fit (or the chooser) runs, model and table already read; 'within bound' "
                     "compares it, less the imports, with the model file plus 3 x the table")
        for shape in args.shapes:
            n, d = (int(v) for v in shape.split("x"))
            table, how = synthetic_table(n, d)
            model_dir = Path(tmp) / shape
            path = write_model(table, model_dir)
            file_bytes = path.stat().st_size + (model_dir / "model.onnx_data").stat().st_size
            bound = file_bytes + 3 * table.nbytes
            notes.append(f"- {shape}: {how}; table {table.nbytes / 2**20:.0f} MiB, "
                         f"bound (model file + 3 x table) {bound / 2**30:.2f} GiB")
            del table
            for run in args.runs:
                flags = [f.format(k=args.clusters) for f in RUNS[run]]
                peak_file = Path(tmp) / f"{shape}-{run}.peak"
                command = [sys.executable, __file__, "--child", str(peak_file), "compress", "--model", str(model_dir),
                           "--output", str(Path(tmp) / f"out-{shape}-{run}"), "--overwrite", *flags]
                log = Path(tmp) / f"{shape}-{run}.log"
                wall, cpu, rss, code = measure(command, args.timeout, log)
                fit_rss = int(peak_file.read_text()) if peak_file.exists() else 0
                tail = log.read_text().strip().splitlines()[-1:] if code else []
                print(f"{shape} {' '.join(flags)}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak {rss / 2**30:.2f} GiB, "
                      f"during the fit {fit_rss / 2**30:.2f} GiB (rc {code}) {tail}", flush=True)
                rows.append([shape, " ".join(flags), "busy" if args.busy else "idle", round(wall, 1), round(cpu, 1),
                             f"{rss / 2**30:.2f}",
                             f"{fit_rss / 2**30:.2f}", f"{(fit_rss - base_rss) / 2**30:.2f}",
                             "yes" if fit_rss - base_rss <= bound else "no", "ok" if code == 0 else f"exit {code}"])
    body = markdown_table(["table", "flags", "machine", "wall s", "CPU s", "peak RSS GiB", "fit peak GiB",
                                 "fit peak above imports GiB", "within bound", "result"], rows)
    append_results("Fitting at vocabulary scale: compress on large word tables (bench_scale)",
                   body + "\n\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
