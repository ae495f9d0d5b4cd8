"""A toy encoding for tests/test_encodings.py: int8 rows, each with its own float32 scale.

Written as a new format would be: one class on storage.base.StorageFormat, in a module of its own; the test
adds it to storage.registry.FORMATS (the one registry line) and nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from projclust_onnx.storage.base import StorageFormat


@dataclass
class RowCodes:
    """codes (n, m) int8 and one float32 scale a row (n,): row t is codes[t] * scales[t]."""

    codes: np.ndarray
    scales: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    def rows(self, index) -> RowCodes:
        return RowCodes(self.codes[index], self.scales[index])


class RowInt8(StorageFormat):
    name = "rowint8"
    bits = 8
    plain_blocks = (None,)
    methods = ("rowint8",)
    help = "rowint8: int8 rows with a float32 scale each (a toy)"

    def nbytes(self, n: int, m: int, itemsize: int = 4) -> int:
        return n * m + 4 * n

    def encode(self, matrix: np.ndarray, sample_weight=None) -> RowCodes:
        X = np.asarray(matrix, dtype=np.float32)
        scales = np.abs(X).max(1) / 127
        scales[scales == 0] = 1
        codes = np.clip(np.rint(X / scales[:, None]), -127, 127).astype(np.int8)
        return RowCodes(codes, scales.astype(np.float32))

    @staticmethod
    def decode(stored: RowCodes) -> np.ndarray:
        return stored.codes.astype(np.float32) * stored.scales[:, None]

    @classmethod
    def holds(cls, stored) -> bool:
        return isinstance(stored, RowCodes)

    def emit_lookup(self, b, stored: RowCodes, ids, form: str, name: str):
        codes = b.op("Gather", [b.const(f"{name}/codes", stored.codes), ids], f"{name}/code_rows")
        scales = b.op("Gather", [b.const(f"{name}/row_scales", stored.scales), ids], f"{name}/scale_rows")
        scales = b.op("Unsqueeze", [scales, b.const(f"{name}/last_axis", np.array([-1], np.int64))],
                      f"{name}/scale_column")
        return b.op("Mul", [b.cast(codes, np.float32, f"{name}/codes_float", np.int8), scales], f"{name}/rows")
