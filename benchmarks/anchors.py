"""The anchors a codebook storage is judged against, written as real model files.

- FAISS `ProductQuantizer` (plain PQ, Jegou et al. 2011) and `OPQMatrix` + PQ (Ge et al. 2013, 10
  alternations instead of FAISS's default 50, for time), fitted by FAISS on the fp32 table (no
  calibration), their codes and centroids written in our codebook lookup (storage/codebook.py:
  float16 centroids; OPQ's rotation as our int8 (d, d) matrix with a float16 scale per row), so the
  bytes are as written and only the fit differs. m must divide d in FAISS.
- ONNX Runtime's GatherBlockQuantized at 2 bits (ORT 1.31 runs `bits=2` on CPU; its quantizer tool
  writes only 4-bit Gathers, so the codes are packed here, four a byte, and checked against ORT).

faiss-cpu is a benchmark/test extra, never a runtime dependency.
"""

from __future__ import annotations

import numpy as np

from projclust_onnx.storage.codebook import Codebooks, codebook_bytes

OPQ_ITERATIONS = 10  # FAISS's default is 50; at m = 96 those took over 10 minutes on 2 cores


def largest_divisor_m(n: int, d: int, budget: float, rank: int | None = None) -> int | None:
    """The largest m dividing d, at most d/4 (sub-vectors of 4 values or more, FAISS's usual range; OPQ's
    training at m = d/2 runs for many minutes), whose codebooks (8-bit codes, with a d x d rotation when
    rank) fit budget."""
    fits = [m for m in range(1, d // 4 + 1) if d % m == 0 and codebook_bytes(n, d, m, 8, rank) <= budget]
    return max(fits) if fits else None


def faiss_pq(table: np.ndarray, m: int, seed: int = 0) -> Codebooks:
    import faiss

    n, d = table.shape
    pq = faiss.ProductQuantizer(d, m, 8)
    pq.cp.seed = seed
    X = np.ascontiguousarray(table, dtype=np.float32)
    pq.train(X)
    centroids = faiss.vector_to_array(pq.centroids).reshape(m, 256, d // m)
    return Codebooks(pq.compute_codes(X), centroids.astype(np.float16), None, 8)


def faiss_opq(table: np.ndarray, m: int, seed: int = 0) -> Codebooks:
    import faiss

    n, d = table.shape
    X = np.ascontiguousarray(table, dtype=np.float32)
    opq = faiss.OPQMatrix(d, m)
    opq.niter = OPQ_ITERATIONS
    opq.pq = faiss.ProductQuantizer(d, m, 8)
    opq.pq.cp.seed = seed
    opq.train(X)
    Y = opq.apply_py(X)  # Y = X A^T
    pq = faiss.ProductQuantizer(d, m, 8)
    pq.cp.seed = seed
    pq.train(Y)
    centroids = faiss.vector_to_array(pq.centroids).reshape(m, 256, d // m)
    A = faiss.vector_to_array(opq.A).reshape(d, d)  # rows of X are Y @ A (A orthonormal)
    scales = (np.abs(A).max(1, keepdims=True) / 127).astype(np.float16)
    rotation = np.clip(np.round(A / scales.astype(np.float32)), -127, 127).astype(np.int8)
    return Codebooks(pq.compute_codes(np.ascontiguousarray(Y)), centroids.astype(np.float16), None, 8, rotation,
                     scales)


def gather_2bit(model_path, out_path, table: np.ndarray, block: int) -> int:
    """Write `model_path` with its word lookup replaced by a 2-bit com.microsoft.GatherBlockQuantized (blocks of
    `block`, asymmetric, min/max range, float16 scales); returns the bytes of the quantized tensors.
    The packing (four codes a byte, the first in the low bits) is checked against ONNX Runtime's output."""
    import onnx_ir as ir
    import onnxruntime as ort
    from projclust_onnx.passes import find_word_embedding

    from projclust_onnx.pipeline.model_files import load_model, save_model

    n, d = table.shape
    blocks = table.reshape(n, d // block, block).astype(np.float32)
    lo, hi = np.minimum(blocks.min(2), 0), np.maximum(blocks.max(2), 0)
    scale = np.where(hi > lo, (hi - lo) / 3, 1.0).astype(np.float16)
    zero = np.clip(np.round(-lo / scale.astype(np.float32)), 0, 3).astype(np.uint8)
    codes = np.clip(np.round(blocks / scale.astype(np.float32)[..., None]) + zero[..., None], 0, 3).astype(np.uint8)
    codes = codes.reshape(n, d)
    packed = _pack2(codes)
    zeros = _pack2(np.pad(zero, ((0, 0), (0, -zero.shape[1] % 4))))
    decoded = ((codes.reshape(n, d // block, block).astype(np.float32) - zero[..., None])
               * scale.astype(np.float32)[..., None]).reshape(n, d)

    tensors = (("codes", packed), ("scales", scale), ("zero_points", zeros))
    attributes = {"gather_axis": 0, "quantize_axis": 1, "block_size": block, "bits": 2}

    def consts():
        return [ir.Value(name=f"word_2bit/{name}", shape=ir.Shape(a.shape), type=ir.TensorType(
            ir.DataType.from_numpy(a.dtype)), const_value=ir.tensor(a, name=f"word_2bit/{name}"))
            for name, a in tensors]

    # the packing, checked first: ONNX Runtime's rows of a one-node model equal ours
    ids = ir.Value(name="ids", shape=ir.Shape([5]), type=ir.TensorType(ir.DataType.INT64))
    c = consts()
    test = ir.node("GatherBlockQuantized", [c[0], ids, c[1], c[2]], domain="com.microsoft", attributes=attributes)
    test.outputs[0].type, test.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT16), ir.Shape([5, d])
    g = ir.Graph([ids], [test.outputs[0]], nodes=[test], initializers=c, opset_imports={"": 17, "com.microsoft": 1})
    rows = np.array([0, 1, n // 2, n - 2, n - 1])
    got = ort.InferenceSession(ir.to_proto(ir.Model(g, ir_version=10)).SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"ids": rows})[0]
    np.testing.assert_allclose(got.astype(np.float32), decoded[rows], rtol=1e-3, atol=1e-3)

    model = load_model(model_path)
    match = find_word_embedding(model.graph)
    lookup, graph = match.lookup, model.graph
    c = consts()
    for v in c:
        graph.register_initializer(v)
    node = ir.node("GatherBlockQuantized", [c[0], lookup.inputs[1], c[1], c[2]], domain="com.microsoft",
                   attributes=attributes, name="word_2bit/lookup")
    graph.insert_before(lookup, node)
    out = node.outputs[0]
    if match.dtype != ir.DataType.FLOAT16:
        cast = ir.node("Cast", [out], attributes={"to": ir.DataType.FLOAT}, name="word_2bit/cast")
        graph.insert_before(lookup, cast)
        out = cast.outputs[0]
    lookup.outputs[0].replace_all_uses_with(out)
    table_value = lookup.inputs[0]
    graph.remove(lookup, safe=True)
    if not table_value.uses():  # the float table goes with its lookup: the bytes are the 2-bit tensors'
        del graph.initializers[table_value.name]
    model.opset_imports.setdefault("com.microsoft", 1)
    save_model(model, out_path)
    return packed.nbytes + scale.nbytes + zeros.nbytes


def _pack2(codes: np.ndarray) -> np.ndarray:
    """(n, m) values 0..3 -> (n, m/4) uint8, the first value in the low two bits."""
    c = codes.reshape(codes.shape[0], -1, 4).astype(np.uint8)
    return (c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)).astype(np.uint8)
