"""Float storage: the table's own float type, read by a plain Gather; a head multiplies it with Gemm/MatMul."""

from __future__ import annotations

import numpy as np

from projclust_onnx.storage.base import StorageFormat

# The float types a word table may be stored in (onnx_ir.DataType names).
FLOAT_TYPES = ("FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE")


class FloatStorage(StorageFormat):
    name = "none"
    factors = True
    head_op = "MatMul"

    @property
    def label(self) -> str:
        return "float"

    def nbytes(self, n: int, m: int, itemsize: int = 4) -> int:
        return n * m * itemsize

    def encode(self, matrix: np.ndarray, sample_weight=None) -> np.ndarray:
        return np.asarray(matrix)

    @staticmethod
    def decode(stored) -> np.ndarray:
        return np.asarray(stored, dtype=np.float32)

    @staticmethod
    def decoded_dtype(stored) -> np.dtype:
        return np.asarray(stored).dtype

    @classmethod
    def holds(cls, stored) -> bool:
        return isinstance(stored, np.ndarray)

    @classmethod
    def recognise(cls, lookup, readers):
        table = lookup.inputs[0].const_value
        if lookup.op_type == "Gather" and len(table.shape) == 2 and table.dtype.name in FLOAT_TYPES:
            return lookup.outputs[0], [lookup], cls()
        return None

    @classmethod
    def read(cls, nodes) -> np.ndarray:
        return nodes[0].inputs[0].const_value.numpy()

    def emit_lookup(self, b, stored, ids, form: str, name: str):
        return b.op("Gather", [b.const(f"{name}/table", np.asarray(stored)), ids], f"{name}/rows")
