"""Quantized storage for lookup tables, in ONNX Runtime's own layouts.

BlockQuantized is the layout of com.microsoft.GatherBlockQuantized (what
MatMulNBitsQuantizer emits for a Gather): each row cut into blocks of `block_size`
values along the row, each block stored as unsigned `bits`-bit codes with a float16
scale and an unsigned zero point, `(code - zero_point) * scale`. Codes and zero
points of 4 bits are packed two a byte, of 2 bits four a byte, the first value in the
lowest bits, in uint8 tensors (the operator's `bits` attribute says how to read them;
ONNX Runtime 1.31 runs `bits=2` on CPU). The same tensors serve the
standard-opset form (Gather, unpack, Sub, Mul), so the bytes do not depend on the form.

PerTensorQuantized is what quantize_dynamic emits for a Gather: one uint8 table,
one scale and one zero point, read by DequantizeLinear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = (2, 4, 8)
# Per-block ranges tried, as fractions of the block's [min, max] span: clipping a few
# outliers buys finer steps for the rest. The lowest squared error wins per block.
_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7)
# Rows quantized at a time: rows are independent, and the float temporaries of a whole
# 250,000-row table would be several times its size.
_ROWS_PER_PIECE = 1 << 15


@dataclass
class BlockQuantized:
    """A matrix of shape (n, m) in blocks of block_size along each row (m % block_size == 0)."""

    data: np.ndarray  # uint8, (n, m * bits / 8): packed below 8 bits
    scales: np.ndarray  # float16 or float32, (n, m/block_size)
    zero_points: np.ndarray  # uint8, (n, ceil(m/block_size * bits / 8)): packed below 8 bits
    bits: int
    block_size: int

    @classmethod
    def quantize(cls, matrix: np.ndarray, bits: int, block_size: int, scale_dtype=np.float16) -> BlockQuantized:
        """Asymmetric block quantization with the per-block range that minimises squared error."""
        if bits not in BITS:
            raise ValueError(f"bits={bits} must be one of {BITS}")
        n, m = matrix.shape
        if m % block_size:
            raise ValueError(f"the row length {m} must be a multiple of block_size={block_size}")
        if m * bits % 8:
            raise ValueError(f"rows of {m} {bits}-bit codes do not fill whole bytes; use a row length that does")
        if n > _ROWS_PER_PIECE:
            parts = [cls.quantize(matrix[start:start + _ROWS_PER_PIECE], bits, block_size, scale_dtype)
                     for start in range(0, n, _ROWS_PER_PIECE)]
            return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("data", "scales",
                                                                                        "zero_points")),
                       bits, block_size)
        blocks = np.asarray(matrix, dtype=np.float32).reshape(n, m // block_size, block_size)
        levels = 2**bits - 1
        lo, hi = np.minimum(blocks.min(axis=2), 0.0), np.maximum(blocks.max(axis=2), 0.0)
        best_err = np.full(lo.shape, np.inf, dtype=np.float64)
        scales = np.zeros(lo.shape, dtype=scale_dtype)
        zeros = np.zeros(lo.shape, dtype=np.uint8)
        work = np.empty_like(blocks)  # one buffer for every ratio, the steps of _decode done in place
        for ratio in _CLIP_RATIOS:
            s = ((hi - lo) * ratio / levels).astype(scale_dtype)
            s = np.where(s > 0, s, np.ones_like(s))  # an all-zero block: any scale codes it exactly
            s32 = s.astype(np.float32)
            z = np.clip(np.round(-lo * ratio / s32), 0, levels).astype(np.uint8)
            np.divide(blocks, s32[..., None], out=work)
            np.round(work, out=work)
            work += z[..., None]
            np.clip(work, 0, levels, out=work)  # the codes
            work -= z.astype(np.float32)[..., None]
            work *= s32[..., None]
            if np.dtype(scale_dtype) != np.float32:
                work[...] = work.astype(scale_dtype)  # the runtime's rounding to the scales' dtype
            work -= blocks
            np.square(work, out=work)
            err = work.sum(axis=2)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            scales = np.where(better, s, scales)
            zeros = np.where(better, z, zeros)
        s32 = scales.astype(np.float32)
        np.divide(blocks, s32[..., None], out=work)
        np.round(work, out=work)
        work += zeros[..., None]
        codes = np.clip(work, 0, levels, out=work).astype(np.uint8)
        codes = codes.reshape(n, m)
        return cls(pack(codes, bits), scales, pack(zeros, bits), bits, block_size)

    @property
    def shape(self) -> tuple[int, int]:
        n, stored = self.data.shape
        return n, stored * (8 // self.bits)

    @property
    def n_blocks(self) -> int:
        return self.scales.shape[1]

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """Unpacked codes of shape (n, m) and zero points of shape (n, m/block_size), uint8."""
        return unpack(self.data, self.shape[1], self.bits), unpack(self.zero_points, self.n_blocks, self.bits)

    def dequantize(self, compute_dtype=None) -> np.ndarray:
        """The values the runtime computes: (code - zero point) * scale, rounded to the scales' dtype
        (GatherBlockQuantized), or to `compute_dtype` when the runtime decodes in another type
        (MatMulNBits on float32 inputs: exact, since float16 scales times small integers fit float32)."""
        codes, zeros = self.codes()
        n, m = self.shape
        blocks = codes.reshape(n, self.n_blocks, self.block_size)
        return _decode(blocks, zeros, self.scales, compute_dtype or self.scales.dtype).reshape(n, m)

    def rows(self, index: np.ndarray) -> BlockQuantized:
        """The storage of rows `index` (codes, scales and zero points are packed per row)."""
        return BlockQuantized(self.data[index], self.scales[index], self.zero_points[index], self.bits,
                              self.block_size)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes + self.zero_points.nbytes


def _decode(codes: np.ndarray, zeros: np.ndarray, scales: np.ndarray, scale_dtype) -> np.ndarray:
    """(codes - zeros) * scales as the runtime does it: in the scales' dtype, returned as float32."""
    diff = codes.astype(np.float32) - zeros.astype(np.float32)[..., None]
    return (diff * scales.astype(np.float32)[..., None]).astype(scale_dtype).astype(np.float32)


@dataclass
class PerTensorQuantized:
    """A table as quantize_dynamic stores it: uint8 codes, one float32 scale, one uint8 zero point."""

    data: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray

    @classmethod
    def quantize(cls, matrix: np.ndarray) -> PerTensorQuantized:
        lo, hi = min(float(matrix.min()), 0.0), max(float(matrix.max()), 0.0)
        scale = np.float32((hi - lo) / 255.0 or 1.0)
        zero = np.uint8(np.clip(np.round(-lo / scale), 0, 255))
        data = np.empty(matrix.shape, dtype=np.uint8)
        for start in range(0, len(matrix), _ROWS_PER_PIECE):
            piece = matrix[start:start + _ROWS_PER_PIECE]
            data[start:start + _ROWS_PER_PIECE] = np.clip(np.round(piece / scale) + zero, 0, 255)
        return cls(data, np.array(scale, np.float32), np.array(zero, np.uint8))

    def rows(self, index) -> PerTensorQuantized:
        """The storage of rows `index`: the same scale and zero point."""
        return PerTensorQuantized(self.data[index], self.scale, self.zero_point)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape

    def dequantize(self) -> np.ndarray:
        return ((self.data.astype(np.float32) - np.float32(self.zero_point)) * self.scale).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scale.nbytes + self.zero_point.nbytes


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack `bits`-bit values (uint8 below 2^bits) 8/bits a byte along the last axis, the first in the lowest
    bits (the last byte padded with zeros); 8 bits: the values as they are."""
    values = np.asarray(values, dtype=np.uint8)
    if bits == 8:
        return values
    per = 8 // bits
    pad = -values.shape[-1] % per
    if pad:
        values = np.concatenate([values, np.zeros(values.shape[:-1] + (pad,), np.uint8)], axis=-1)
    mask = (1 << bits) - 1
    out = np.zeros(values.shape[:-1] + (values.shape[-1] // per,), np.uint8)
    for i in range(per):
        out |= (values[..., i::per] & mask) << (i * bits)
    return out


def unpack(packed: np.ndarray, length: int, bits: int) -> np.ndarray:
    """Inverse of pack, cut to `length` values along the last axis."""
    if bits == 8:
        return packed[..., :length]
    per = 8 // bits
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * per,), dtype=np.uint8)
    for i in range(per):
        out[..., i::per] = (packed >> (i * bits)) & ((1 << bits) - 1)
    return out[..., :length]


def pack4(values: np.ndarray) -> np.ndarray:
    """Pack 4-bit values (uint8 in 0..15) two a byte along the last axis, low nibble first."""
    return pack(values, 4)


def unpack4(packed: np.ndarray, length: int) -> np.ndarray:
    """Inverse of pack4, cut to `length` values along the last axis."""
    return unpack(packed, length, 4)


def block_quantized_bytes(n: int, m: int, bits: int, block_size: int, scale_bytes: int = 2) -> int:
    """Bytes of BlockQuantized storage for an (n, m) matrix."""
    blocks = m // block_size
    zero_bytes = -(-blocks * bits // 8)  # packed, the last byte padded
    return n * (m * bits // 8 + blocks * scale_bytes + zero_bytes)
