"""Every registered storage format, through the registry: bytes as written, encode/decode round trips,
its lookup under ONNX Runtime against the decoded table, and the finder reading it back.

The tests run over storage.registry.FORMATS, so a new format is covered by registering it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projclust_onnx.passes import LOOKUP_FORMS, search_word_embedding
from projclust_onnx.passes.builder import Builder

from projclust_onnx.storage.base import StorageFormat
from projclust_onnx.storage.codebook import CodebookStorage
from projclust_onnx.storage.registry import (
    FORMATS,
    QUANTIZE,
    factor_storage,
    factor_storages,
    format_of,
    get,
    name_for_bits,
    plain_storages,
)

# Formats sized to a budget (codebooks) are tried at these sizes; a new sized format must add its own.
SIZED = {CodebookStorage: [CodebookStorage(16), CodebookStorage(24, 6)]}
# Each registered format that emits its own lookup at a block size it accepts (the factors, written as k
# branches by the factor passes, are tested in test_factorization.py and test_passes.py).
INSTANCES = [fmt for cls in FORMATS if not cls.branches for fmt in
             (SIZED[cls] if cls.sized else
              [cls(block) for block in (cls.plain_blocks or (32 if cls.blocked else None,))])]
IDS = [f.label for f in INSTANCES]


def table(n: int, m: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, m)) * rng.uniform(0.1, 2.0, (n, 1))).astype(np.float32)


def lookup_model(storage, stored, n: int, m: int, form: str) -> ir.Model:
    """ids (batch, seq) -> the storage's lookup -> float32 embeddings (batch, seq, m), built through a Builder."""
    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "seq"]), type=ir.TensorType(ir.DataType.INT64))
    flat_shape = ir.tensor(np.array([-1], np.int64), name="flat_shape")
    shape_value = ir.Value(name="flat_shape", shape=ir.Shape([1]), type=ir.TensorType(ir.DataType.INT64),
                           const_value=flat_shape)
    flat = ir.node("Reshape", [ids, shape_value], name="flat")
    out = ir.node("Identity", [flat.outputs[0]], name="anchor")
    graph = ir.Graph([ids], [], nodes=[flat, out], initializers=[shape_value], opset_imports={"": 18}, name="g")
    b = Builder(graph, out)
    rows = storage.emit_lookup(b, stored, flat.outputs[0], form, "table")
    rows = b.cast(rows, np.float32, "rows_float", storage.decoded_dtype(stored))
    rows.shape, rows.type = ir.Shape([None, m]), ir.TensorType(ir.DataType.FLOAT)
    graph.outputs.append(rows)
    graph.remove(out, safe=True)
    return ir.Model(graph, ir_version=10)


def run(model: ir.Model, ids: np.ndarray) -> np.ndarray:
    proto = ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(proto, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]


@pytest.mark.parametrize("storage", INSTANCES, ids=IDS)
def test_bytes_as_written_and_round_trip(storage):
    X = table(37, 128)
    stored = storage.encode(X)
    assert storage.nbytes(37, 128) == getattr(stored, "nbytes", None)
    assert format_of(stored) == storage
    decoded = storage.decode(stored)
    assert decoded.shape == X.shape and decoded.dtype == np.float32
    # float storage is exact; b bits a value leave a relative error well under 2^(2-b); codebooks with at least
    # as many centroids as rows keep each row, up to float16 rounding
    relative = np.linalg.norm(decoded - X) / np.linalg.norm(X)
    assert relative <= (1e-3 if storage.sized else 2.0 ** (2 - storage.bits) if storage.bits else 0.0)


@pytest.mark.parametrize("form", LOOKUP_FORMS)
@pytest.mark.parametrize("storage", INSTANCES, ids=IDS)
def test_emitted_lookup_under_ort_equals_the_decoded_table(storage, form):
    n, m = 50, 128
    stored = storage.encode(table(n, m, seed=1))
    ids = np.array([[0, 3, n - 1], [7, 7, 2]], np.int64)
    got = run(lookup_model(storage, stored, n, m, form), ids)
    np.testing.assert_array_equal(got, storage.decode(stored)[ids.reshape(-1)])


@pytest.mark.parametrize("storage", [s for s in INSTANCES if s.bits is not None and
                                     type(s).read.__func__ is not StorageFormat.read.__func__], ids=lambda s: s.label)
def test_the_finder_reads_a_quantized_lookup_back_as_stored(storage):
    """A model storing its table this way (as ONNX Runtime's quantizers would) is recognised by the finder,
    labelled as the format labels it, and read back into the same stored tensors."""
    n, m = 40, 128
    stored = storage.encode(table(n, m, seed=2))
    model = lookup_model(storage, stored, n, m, "contrib")
    match = search_word_embedding(model.graph).single()
    assert match.storage == storage.label and match.shape == (n, m) and match.bits == storage.bits
    np.testing.assert_array_equal(match.dense(), storage.decode(stored))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), blocks=st.integers(1, 4), block=st.sampled_from([16, 32, 64]),
       pick=st.integers(0, len(FORMATS) - 1), seed=st.integers(0, 2**16))
def test_every_format_round_trips_any_shape(n, blocks, block, pick, seed):
    """(Sized formats: their own hypothesis test over (n, d, m, b), test_codebook.py.)"""
    plain = [c for c in FORMATS if not c.sized and not c.branches]  # factors: test_factorization.py
    cls = plain[pick % len(plain)]
    storage = cls(block if cls.blocked else None)
    m = blocks * block
    X = table(n, m, seed)
    stored = storage.encode(X)
    assert storage.nbytes(n, m) == stored.nbytes
    assert storage.decode(stored).shape == (n, m)
    assert format_of(stored) == storage


def test_the_registry_names_what_budget_cli_and_reports_use():
    assert QUANTIZE == ("none", "int8", "int4")
    assert [name_for_bits(b) for b in (None, 8, 4)] == ["none", "int8", "int4"]
    assert get("int8").label == "int8 per-tensor" and get("int8", 32).label == "int8 block 32"
    assert factor_storage("int4", 64).rank_step() == 64 and factor_storage("none", 64).rank_step() == 1
    # the chooser's plain candidates, in the order it tries them, only where whole blocks fit the row
    assert [s.label for s in plain_storages(384)] == ["int8 per-tensor", "int8 block 128", "int8 block 32",
                                                      "int4 block 128", "int4 block 64", "int4 block 32",
                                                      "int2 block 128", "int2 block 64", "int2 block 32"]
    assert [s.label for s in plain_storages(96)] == ["int8 per-tensor", "int8 block 32", "int4 block 32",
                                                     "int2 block 32"]
    assert [s.label for s in factor_storages((32, 64))] == ["float", "int8 block 32", "int8 block 64",
                                                           "int4 block 32", "int4 block 64"]
    with pytest.raises(ValueError, match="int3"):
        factor_storage("int3", 32)
    with pytest.raises(TypeError, match="list"):
        format_of([1, 2])


@pytest.mark.parametrize(("quantize", "block"), [("int8", None), ("int8", 32), ("int4", 64), ("int4", 32)])
def test_plain_storage_bytes_are_known_before_quantizing(quantize, block):
    from projclust_onnx.storage.quantization import BlockQuantized, PerTensorQuantized

    M = np.random.default_rng(2).standard_normal((33, 128)).astype(np.float32)
    q = PerTensorQuantized.quantize(M) if block is None else BlockQuantized.quantize(M, int(quantize[3:]), block)
    assert get(quantize, block).nbytes(33, 128) == q.nbytes


def test_every_sized_format_has_examples_here():
    assert {cls for cls in FORMATS if cls.sized} == set(SIZED)
