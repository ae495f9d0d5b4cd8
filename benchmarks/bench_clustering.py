"""Relative error and wall time of the clustering core on the MiniLM word embedding.

Budgets 20/40/60%, k in {1, 3, 5, 8} (k = 1 is the SVD), against a reference that follows
the authors' procedure as the paper describes it (random equal split, 5 Lloyd steps,
5 restarts, numpy SVD per cluster on the CPU). On a CUDA GPU it also times a
128,000 x 4,096 matrix (an LLM vocabulary) with k = 8 at a 50% budget.

Then the k = 5, 40% fit on a busy machine, all in one run: idle, beside one and beside two
single-threaded busy processes (pure-Python loops), as on a shared server or CI runner.

    python benchmarks/bench_clustering.py [--budgets 0.2 0.4 0.6] [--clusters 1 3 5 8] [--no-reference]
                                          [--busy 0 1 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings

import numpy as np
import torch
from common import append_results, markdown_table

from projclust_onnx import ProjectiveClustering, rank_for_budget
from projclust_onnx.pipeline.bundled import bundled_word_embedding


def authors_reference(E: np.ndarray, k: int, j: int, steps: int = 5, restarts: int = 5, seed: int = 0) -> float:
    """Cost of the paper's procedure: random equal split, `steps` Lloyd steps, best of `restarts`."""
    rng = np.random.default_rng(seed)
    n = len(E)
    best = np.inf
    for _ in range(restarts):
        labels = rng.permutation(n) % k
        for _ in range(steps):
            bases = []
            for c in range(k):
                _, _, vt = np.linalg.svd(E[labels == c], full_matrices=False)
                bases.append(vt[:j])
            resid = np.stack([((E - (E @ b.T) @ b) ** 2).sum(1) for b in bases], axis=1)
            labels = resid.argmin(1)
        best = min(best, float(resid.min(1).sum()))
    return best


def timed_fit(E, k, j, **kwargs):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ProjectiveClustering(k, j, random_state=0, **kwargs).fit(E)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    parser.add_argument("--clusters", type=int, nargs="+", default=[1, 3, 5, 8])
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference row")
    parser.add_argument("--busy", type=int, nargs="*", default=[0, 1, 2],
                        help="numbers of busy processes to time the k=5, 40%% fit beside (empty: skip)")
    args = parser.parse_args()

    E = bundled_word_embedding().astype(np.float32)
    total = float((E.astype(np.float64) ** 2).sum())
    n, d = E.shape
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for compression in args.budgets:
        for k in args.clusters:
            j = rank_for_budget(n, d, k, compression)
            model, seconds = timed_fit(E, k, j)
            rows.append([f"{compression:.0%}", k, j, "projclust-onnx", device, model.cost_ / total, seconds, ""])
    if not args.no_reference:
        k, compression = 5, 0.4
        j = rank_for_budget(n, d, k, compression)
        start = time.perf_counter()
        cost = authors_reference(E, k, j)
        ref_seconds = time.perf_counter() - start
        ours = next((r for r in rows if r[0] == "40%" and r[1] == 5), None)
        ratio = f"ours/reference = {ours[6] / ref_seconds:.3f}" if ours else ""
        rows.append([f"{compression:.0%}", k, j, "authors' procedure (reference)", "cpu numpy", cost / total,
                     ref_seconds, ratio])
    body = markdown_table(["budget", "k", "j", "method", "device", "rel. error", "seconds", "time ratio"], rows)

    if torch.cuda.is_available():
        n_big, d_big, k_big = 128_000, 4_096, 8
        j_big = rank_for_budget(n_big, d_big, k_big, 0.5)
        gen = torch.Generator(device="cuda").manual_seed(0)
        big = torch.randn(n_big, 256, device="cuda", generator=gen) @ torch.randn(256, d_big, device="cuda",
                                                                                   generator=gen)
        big += 0.1 * torch.randn(n_big, d_big, device="cuda", generator=gen)
        model, seconds = timed_fit(big, k_big, j_big, n_init=3)
        body += (f"\n\nLLM-vocabulary scale on {torch.cuda.get_device_name(0)}: {n_big} x {d_big}, k={k_big}, "
                 f"j={j_big} (50% budget), synthetic rank-256 + noise matrix: {seconds:.1f} s, "
                 f"{model.n_iter_} Lloyd iterations.")
    if args.busy:
        body += "\n\n" + contention_table(E, total, args.busy)
    append_results("Clustering core on the MiniLM word embedding (30522 x 384)", body)


def contention_table(E: np.ndarray, total: float, busy_counts: list[int]) -> str:
    """The k=5, 40% fit beside 0, 1, 2... busy single-threaded processes, as ratios to idle."""
    from projclust_onnx.common.threads import available_cpus

    n, d = E.shape
    j = rank_for_budget(n, d, 5, 0.4)
    rows, idle = [], None
    for count in busy_counts:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
        try:
            time.sleep(1.0)
            model, seconds = timed_fit(E, 5, j)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        idle = seconds if count == 0 else idle
        ratio = f"{seconds / idle:.2f}" if idle else ""
        rows.append([count, model.cost_ / total, seconds, ratio])
    header = (f"k=5, j={j} (40%) beside busy processes; {available_cpus()} CPUs available, "
              f"torch {torch.get_num_threads()} threads for products, 1 for the eigendecompositions:\n\n")
    return header + markdown_table(["busy processes", "rel. error", "seconds", "vs idle"], rows)


if __name__ == "__main__":
    main()
