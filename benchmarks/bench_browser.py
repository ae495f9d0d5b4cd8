"""Load time and latency of models in headless Chromium (onnxruntime-web, WASM; WebGPU where offered) against
ONNX Runtime's CPU provider, on the same token ids; the largest output difference from the CPU's.

    python benchmarks/bench_browser.py original=minilm-onnx/model.onnx pc40=minilm-40/model.onnx \\
        int4=minilm-q4/model.onnx --tokenizer minilm-onnx/

Needs Debian's chromium and `npm install --prefix tests/browser` (as .ci/run does). The page runs
onnxruntime-web with one thread (a plain static server gives no cross-origin isolation); ONNX Runtime
on the CPU is timed with one intra-op thread too, so the two compare like for like.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import append_results, markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser_harness import missing, run_in_browser  # noqa: E402

TEXTS = ["These are the best tasting gummy fruits I have ever eaten.", "Stale and overpriced, would not buy again.",
         "My dog loves these treats.", "The coffee arrived quickly and tastes fine."]


def cpu_run(path: Path, feeds: dict, repeats: int) -> tuple[float, float, np.ndarray]:
    """(session load ms, p50 run ms, output) with one intra-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    started = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load = (time.perf_counter() - started) * 1e3
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    output = session.run(None, feeds)[0]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1e3)
    return load, float(np.median(times)), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=FILE")
    parser.add_argument("--tokenizer", required=True, help="a directory holding the models' tokenizer")
    parser.add_argument("--length", type=int, default=32, help="tokens per text, padded (default: 32)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if missing():
        raise SystemExit(missing())
    from transformers import AutoTokenizer

    models = dict(spec.split("=", 1) for spec in args.models)
    batch = AutoTokenizer.from_pretrained(args.tokenizer)(TEXTS, padding="max_length", max_length=args.length,
                                                           truncation=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    feeds = {"input_ids": np.array(ids, np.int64), "attention_mask": np.array(mask, np.int64),
             "token_type_ids": np.zeros_like(np.array(ids, np.int64))}
    browser = run_in_browser({name: Path(path) for name, path in models.items()}, ids, mask, repeats=args.repeats)
    rows = []
    for name, path in models.items():
        load, p50, want = cpu_run(Path(path), feeds, args.repeats)
        row = [name, f"{Path(path).stat().st_size / 2**20:.1f}", f"{load:.0f}", f"{p50:.1f}"]
        for backend in ("wasm", "webgpu"):
            result = browser["models"][name].get(backend)
            if result is None or "error" in result:
                row += ["-", "-", (result or {}).get("error", "not offered")[:60]]
                continue
            got = np.array(result["output"], np.float32).reshape(result["dims"])
            row += [f"{result['load_ms']:.0f}", f"{result['latency_ms']:.1f}", f"{np.max(np.abs(got - want)):.1e}"]
        rows.append(row)
    table = markdown_table(["model", "MiB", "CPU load ms", "CPU run ms", "WASM load ms", "WASM run ms",
                            "WASM max diff", "WebGPU load ms", "WebGPU run ms", "WebGPU max diff"], rows)
    body = (f"batch {len(ids)} x {args.length} tokens, p50 of {args.repeats} runs, one thread on each side; "
            f"WebGPU: {browser['webgpu']}.\n\n{table}")
    print(body)
    append_results("bench_browser.py", body)


if __name__ == "__main__":
    main()
