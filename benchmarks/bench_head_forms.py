"""The forms a tied LM head can take over codebooks, at a Qwen2.5-0.5B-size table: latency and session memory.

The head alone (hidden (M, d) -> logits (M, n)), CPU provider, thread spinning off, the forms
interleaved in one run, p50 of `--repeats`:

- dense: MatMul(hidden, W) with W the float (d, n) table, what the original model holds;
- decoded: what QuantizeEmbeddingPass(tied=True) writes: the table decoded from the codebooks'
  constants (Range(0, n) through the storage's own lookup) and transposed, which ONNX Runtime
  folds at session start into a dense (d, n) table;
- look-up tables: no table at all. The hidden state's coordinates on the rotation are cut into
  the m sub-vectors; each sub-vector's dot products with its 2^b centroids form a table
  (m, 2^b); a row's logit is the sum of its m codes' entries (Gather + ReduceSum), plus its
  leading coordinates times the hidden state's.

Random codes and centroids sized as --method codebook sizes a tied head's (bench_decode's
random_codebooks): timing does not depend on the values. Memory: growth of peak RSS and of the
RSS held after creating the session and one run, each form in a process of its own.

    python benchmarks/bench_head_forms.py [--ratio 16] [--rows 1 4 16] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from bench_decode import HIDDEN, VOCAB, random_codebooks
from common import append_results, markdown_table, session_memory_mb
from onnx import TensorProto, helper, numpy_helper

from projclust_onnx.common.threads import session_options


def _model(nodes, initializers, n: int, d: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["M", d])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["M", n])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def dense_head(table: np.ndarray) -> onnx.ModelProto:
    n, d = table.shape
    return _model([helper.make_node("MatMul", ["hidden", "W"], ["logits"])],
                  [numpy_helper.from_array(np.ascontiguousarray(table.T), "W")], n, d)


def decoded_head(stored) -> onnx.ModelProto:
    """MatMul(hidden, Transpose(table')), table' decoded from the codebooks by the pass's own decode."""
    import onnx_ir as ir
    from projclust_onnx.passes.builder import Builder
    from projclust_onnx.passes.quantize_embedding import decoded_table

    n, d = stored.shape
    hidden = ir.Value(name="hidden", shape=ir.Shape(["M", d]), type=ir.TensorType(ir.DataType.FLOAT))
    head = ir.node("MatMul", [hidden, hidden], name="lm_head")
    head.outputs[0].name = "logits"
    graph = ir.Graph([hidden], head.outputs, nodes=[head], opset_imports={"": 17}, name="head")
    b = Builder(graph, head)
    table = decoded_table(b, stored, np.float32)
    head.replace_input_with(1, b.op("Transpose", [table], "table_transposed", perm=[1, 0]))
    head.outputs[0].type, head.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(["M", n])
    return ir.serde.serialize_model(ir.Model(graph, ir_version=10))


def lut_head(stored) -> onnx.ModelProto:
    """Per-sub-vector look-up tables: logits = sum_i LUT_i[code_i] + leading . hidden's leading coordinates."""
    n, d = stored.shape
    m, K, s = stored.codebooks.shape
    t = 0 if stored.leading is None else stored.leading.shape[1]
    basis = stored.basis()  # (r, d)
    r = basis.shape[0] - t
    position = stored.columns if stored.columns is not None else np.arange(r)
    padded = np.full(m * s, r, np.int64)  # where each padded place reads its coordinate (r: a zero)
    padded[position] = np.arange(r)
    index = stored.codes.astype(np.int32) + (np.arange(m) * K).astype(np.int32)  # (n, m) into the (m K) tables
    const = numpy_helper.from_array
    nodes = [helper.make_node("MatMul", ["hidden", "coded_basis"], ["coordinates"]),
             helper.make_node("Shape", ["hidden"], ["hidden_shape"]),
             helper.make_node("Slice", ["hidden_shape", "zero", "one"], ["rows"]),
             helper.make_node("Concat", ["rows", "one"], ["zeros_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["zeros_shape"], ["zeros"],
                              value=helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("Concat", ["coordinates", "zeros"], ["with_zero"], axis=1),
             helper.make_node("Gather", ["with_zero", "padded"], ["padded_coordinates"], axis=1),
             helper.make_node("Reshape", ["padded_coordinates", "sub_shape"], ["sub_vectors"]),
             helper.make_node("Transpose", ["sub_vectors"], ["by_sub_vector"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["by_sub_vector", "centroids"], ["tables"]),  # (m, M, K)
             helper.make_node("Transpose", ["tables"], ["tables_by_row"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["tables_by_row", "flat_shape"], ["flat_tables"]),  # (M, m K)
             helper.make_node("Gather", ["flat_tables", "index"], ["entries"], axis=1),  # (M, n, m)
             helper.make_node("ReduceSum", ["entries", "last"], ["coded_logits"], keepdims=0)]
    initializers = [const(np.ascontiguousarray(basis[t:].T), "coded_basis"), const(padded, "padded"),
                    const(np.array([0], np.int64), "zero"), const(np.array([1], np.int64), "one"),
                    const(np.array([-1, m, s], np.int64), "sub_shape"),
                    const(np.ascontiguousarray(stored.codebooks.astype(np.float32).transpose(0, 2, 1)), "centroids"),
                    const(np.array([-1, m * K], np.int64), "flat_shape"), const(index, "index"),
                    const(np.array([2], np.int64), "last")]
    if t:
        nodes[-1].output[0] = "coded_logits"
        nodes += [helper.make_node("MatMul", ["hidden", "leading_basis"], ["leading_coordinates"]),
                  helper.make_node("MatMul", ["leading_coordinates", "leading"], ["leading_logits"]),
                  helper.make_node("Add", ["coded_logits", "leading_logits"], ["logits"])]
        initializers += [const(np.ascontiguousarray(basis[:t].T), "leading_basis"),
                         const(np.ascontiguousarray(stored.leading.astype(np.float32).T), "leading")]
    else:
        nodes[-1].output[0] = "logits"
    return _model(nodes, initializers, n, d)


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=16, help="codebooks at 1/R of the float table's bytes")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16], help="positions per run (M)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    stored = random_codebooks(VOCAB, HIDDEN, args.ratio)
    table = stored.dequantize()
    forms = {"dense": dense_head(table), "decoded (written by the pass)": decoded_head(stored),
             "look-up tables": lut_head(stored)}
    with tempfile.TemporaryDirectory(prefix="bench-head-forms-") as tmp:
        paths = {}
        for i, (name, model) in enumerate(forms.items()):
            paths[name] = Path(tmp) / f"head{i}.onnx"
            onnx.save(model, str(paths[name]))
        sizes = {name: p.stat().st_size for name, p in paths.items()}
        sessions = {name: ort.InferenceSession(str(p), session_options(0), providers=["CPUExecutionProvider"])
                    for name, p in paths.items()}
        rng = np.random.default_rng(0)
        check = rng.standard_normal((2, HIDDEN)).astype(np.float32)
        want = check @ table.T
        for name, s in sessions.items():  # every form computes the decoded table's logits
            got = s.run(None, {"hidden": check})[0]
            assert np.allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max()), f"{name}: wrong logits"
        p50 = {}
        for M in args.rows:
            hidden = rng.standard_normal((M, HIDDEN)).astype(np.float32)
            times = {name: [] for name in sessions}
            for s in sessions.values():
                for _ in range(3):
                    s.run(None, {"hidden": hidden})
            for _ in range(args.repeats):
                for name, s in sessions.items():
                    start = time.perf_counter()
                    s.run(None, {"hidden": hidden})
                    times[name].append((time.perf_counter() - start) * 1e3)
            p50[M] = {name: statistics.median(v) for name, v in times.items()}
            print(M, {k: round(v, 2) for k, v in p50[M].items()}, file=sys.stderr)
        del sessions
        memory = {name: session_memory_mb(p, {"hidden": ([1, HIDDEN], "float32", 1.0)}) for name, p in paths.items()}

    rows = []
    for name in forms:
        rows.append([name, f"{sizes[name] / 2**20:.0f}", *(f"{p50[M][name]:.1f} ({p50[M]['dense'] / p50[M][name]:.2f}x)"
                                                           for M in args.rows),
                     f"{memory[name][0]:.0f}", f"{memory[name][1]:.0f}"])
    body = (f"Tied head alone over codebooks at 1/{args.ratio:g} of a {VOCAB} x {HIDDEN} table ({stored.m} sub-vectors "
            f"of 256 centroids, rotation, {stored.leading.shape[1]} leading directions in float16; random values), "
            f"hidden (M, {HIDDEN}) -> logits; p50 of {args.repeats} interleaved runs, CPU provider, spinning off "
            "(speed: dense ms / form ms). Memory: growth of peak RSS and of RSS held after creating the session "
            "and one run, own process each.\n\n"
            + markdown_table(["head form", "file MiB", *(f"M={M} ms" for M in args.rows), "session peak RSS MiB",
                              "RSS held MiB"], rows))
    append_results("Tied head forms over codebooks (bench_head_forms.py)", body)


if __name__ == "__main__":
    main()
