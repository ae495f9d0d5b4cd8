"""Per-tensor int8, as quantize_dynamic stores a Gather's table: uint8 codes, one scale, one zero point.

    ids -> Gather(uint8 table) -> DequantizeLinear(scale, zero point) -> rows
"""

from __future__ import annotations

import numpy as np

from projclust_onnx.storage.base import StorageFormat
from projclust_onnx.storage.quantization import PerTensorQuantized


class PerTensorInt8(StorageFormat):
    name = "int8"
    bits = 8
    plain_blocks = (None,)

    @property
    def label(self) -> str:
        return "int8 per-tensor"

    def nbytes(self, n: int, m: int, itemsize: int = 4) -> int:
        return n * m + 5  # codes, a float32 scale, a uint8 zero point

    def encode(self, matrix: np.ndarray, sample_weight=None) -> PerTensorQuantized:
        return PerTensorQuantized.quantize(matrix)

    @staticmethod
    def decode(stored: PerTensorQuantized) -> np.ndarray:
        return stored.dequantize()

    @classmethod
    def holds(cls, stored) -> bool:
        return isinstance(stored, PerTensorQuantized)

    @classmethod
    def recognise(cls, lookup, readers):
        table = lookup.inputs[0].const_value
        if lookup.op_type != "Gather" or len(table.shape) != 2 or table.dtype.name not in ("UINT8", "INT8"):
            return None
        scalars = len(readers) == 1 and all(v is None or (v.const_value is not None and v.const_value.size == 1)
                                            for v in readers[0].inputs[1:])
        if scalars and readers[0].op_type == "DequantizeLinear":
            return readers[0].outputs[0], [lookup, readers[0]], cls()
        return None

    @classmethod
    def read(cls, nodes) -> PerTensorQuantized:
        scale, zero = (v.const_value.numpy() for v in nodes[-1].inputs[1:3])
        return PerTensorQuantized(nodes[0].inputs[0].const_value.numpy(), scale, zero)

    def emit_lookup(self, b, stored: PerTensorQuantized, ids, form: str, name: str):
        codes = b.op("Gather", [b.const(f"{name}/codes", stored.data), ids], f"{name}/row_codes")
        return b.op("DequantizeLinear", [codes, b.const(f"{name}/scale", stored.scale),
                                         b.const(f"{name}/zero_point", stored.zero_point)], f"{name}/rows")
