"""Keep every initializer of a Gemma-sized factorized embedding under WebGPU's 256 MiB per buffer.

A random model with Gemma's 262144 x 2304 float16 tied table and two layers is rewritten with random
factors at 40% (the budget's rank), then SplitInitializersPass(256 MiB) runs; the script prints the largest
initializer before and after, per setting. Graph passes only: at this size a numeric check under ONNX Runtime
(a dense reference of 2.4 GB beside the model) does not fit a 2-core, shared machine; the split itself is
checked numerically on small models in tests/test_split_initializers.py.

    python benchmarks/bench_split.py [--rows 262144 --dim 2304]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx_ir as ir
from common import append_results
from onnx import TensorProto, helper, numpy_helper
from projclust_onnx.passes import FactorizeEmbeddingPass, FactorizeHeadPass, SplitInitializersPass, with_cleanup

from projclust_onnx.pipeline.config import ProjClustConfig
from projclust_onnx.storage.factorization import EmbeddingFactorization

LIMIT = 256 * 2**20


def random16(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Normal float16 values, drawn in slices so that no float32 copy of a Gemma-sized array is ever held."""
    out = np.empty(shape, np.float16)
    for start in range(0, shape[0], 8192):
        out[start:start + 8192] = scale * rng.standard_normal(out[start:start + 8192].shape, dtype=np.float32)
    return out


def gemma_like(n: int, d: int, rng: np.random.Generator):
    """input_ids -> Gather(E) -> two residual MLP layers -> logits = Gemm(h, E, transB=1): a tied head."""
    table = random16(rng, (n, d), 0.02)
    inits = [numpy_helper.from_array(table, "embed_tokens.weight"),
             numpy_helper.from_array(np.array([-1, d], np.int64), "flat")]
    nodes = [helper.make_node("Gather", ["embed_tokens.weight", "input_ids"], ["h0"]),
             helper.make_node("Reshape", ["h0", "flat"], ["x0"])]
    for layer in range(2):
        for name in ("up", "down"):
            inits.append(numpy_helper.from_array(
                (0.02 * rng.standard_normal((d, d), dtype=np.float32)).astype(np.float16), f"layer{layer}.{name}"))
        nodes += [helper.make_node("MatMul", [f"x{layer}", f"layer{layer}.up"], [f"u{layer}"]),
                  helper.make_node("Relu", [f"u{layer}"], [f"r{layer}"]),
                  helper.make_node("MatMul", [f"r{layer}", f"layer{layer}.down"], [f"m{layer}"]),
                  helper.make_node("Add", [f"x{layer}", f"m{layer}"], [f"x{layer + 1}"])]
    nodes.append(helper.make_node("Gemm", ["x2", "embed_tokens.weight"], ["logits"], transB=1))
    graph = helper.make_graph(nodes, "gemma_like", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                                   ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["tokens", n])], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def largest(model: ir.Model) -> tuple[str, int]:
    name, value = max(model.graph.initializers.items(), key=lambda item: item[1].const_value.nbytes)
    return name, value.const_value.nbytes


def run(n: int, d: int, k: int) -> dict:
    """Rewrite the Gemma-like model with random factors of the 40% budget's rank, then split; the largest
    initializer before and after the split."""
    rng = np.random.default_rng(0)
    model = gemma_like(n, d, rng)
    j = ProjClustConfig(compression=0.4, n_clusters=k).rank_for(n, d, 2)
    f = EmbeddingFactorization(labels=rng.integers(0, k, n),
                               U=random16(rng, (n, j), 0.1), V=random16(rng, (k, j, d), 0.1))
    with_cleanup(ir.passes.Sequential(FactorizeHeadPass(f), FactorizeEmbeddingPass(f, tied=True)))(model)
    before = largest(model)
    started = time.perf_counter()
    with_cleanup(SplitInitializersPass(LIMIT))(model)
    return {"j": j, "before": before, "after": largest(model), "split_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--clusters", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    lines = [f"Gemma-sized float16 tied table {args.rows} x {args.dim} "
             f"({args.rows * args.dim * 2 / 2**20:.0f} MiB), two layers, 40% (rank from the budget), "
             f"SplitInitializersPass({LIMIT // 2**20} MiB):", "",
             "| k | j | largest initializer before | after |", "|---|---|---|---|"]
    for k in args.clusters:
        r = run(args.rows, args.dim, k)
        lines.append(f"| {k} | {r['j']} | {r['before'][0]} {r['before'][1] / 2**20:.1f} MiB | "
                     f"{r['after'][0]} {r['after'][1] / 2**20:.1f} MiB |")
        assert r["after"][1] <= LIMIT
    print("\n".join(lines))
    append_results("bench_split.py", "\n".join(lines))


if __name__ == "__main__":
    main()
