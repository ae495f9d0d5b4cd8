"""Block-quantized storage, in ONNX Runtime's GatherBlockQuantized layout (what MatMulNBitsQuantizer emits).

Each row is cut into blocks of `block_size` values; a block holds unsigned `bits`-bit codes, a
float16 scale and a zero point (quantization.BlockQuantized). Two lookup forms read the same
tensors::

    "contrib":  com.microsoft.GatherBlockQuantized(codes, ids, scales, zero points)  -> rows (T, m)
    "standard": Gather(codes, ids), Gather(scales, ids), Gather(zero points, ids)
                [4 or 2 bits: Cast(int32), Div / Mod 2^bits, interleave]  -> codes (T, m), zeros (T, m/B)
                (Cast(codes) - Cast(zeros)) * scales, per block of B                  -> rows (T, m)

A tied head multiplies U in this storage with com.microsoft.MatMulNBits (the same bytes, 3-D).
2-bit blocks (int2) store whole tables only (the chooser's plain candidates), not U.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from projclust_onnx.storage.base import CONTRIB_DOMAIN, LOOKUP_FORMS, StorageFormat
from projclust_onnx.storage.quantization import BlockQuantized, block_quantized_bytes, pack, unpack


class BlockStorage(StorageFormat):
    """`bits`-bit codes in blocks along each row; quantized ranks are whole blocks."""

    blocked = True
    factors = True
    flat_ids = True  # the standard form decodes (T, m) rows
    head_op = "MatMulNBits"
    bits: ClassVar[int]

    @property
    def label(self) -> str:
        return f"{self.name} block {self.block_size}"

    def rank_step(self) -> int:
        # ONNX Runtime's CUDA GatherBlockQuantized is wrong on a partial last block.
        return self.block_size

    def fits_row(self, m: int) -> bool:
        return m % self.block_size == 0

    def nbytes(self, n: int, m: int, itemsize: int = 4) -> int:
        return block_quantized_bytes(n, m, self.bits, self.block_size)

    def encode(self, matrix: np.ndarray, sample_weight=None) -> BlockQuantized:
        return BlockQuantized.quantize(matrix, self.bits, self.block_size)

    @staticmethod
    def decode(stored: BlockQuantized) -> np.ndarray:
        return stored.dequantize()

    @staticmethod
    def decoded_dtype(stored: BlockQuantized) -> np.dtype:
        return np.dtype(stored.scales.dtype)

    @classmethod
    def holds(cls, stored) -> bool:
        return isinstance(stored, BlockQuantized) and stored.bits == cls.bits

    @classmethod
    def recognise(cls, lookup, readers):
        if lookup.op_type != "GatherBlockQuantized" or lookup.domain != CONTRIB_DOMAIN or bits_of(lookup) != cls.bits:
            return None
        attrs = lookup.attributes
        if attrs.get("gather_axis") is not None and attrs["gather_axis"].as_int() != 0 or \
                attrs.get("quantize_axis") is None or attrs["quantize_axis"].as_int() != 1 or \
                len(lookup.inputs[0].const_value.shape) != 2:
            return "not a 2-D table gathered along axis 0 and quantized along axis 1"
        return lookup.outputs[0], [lookup], cls(attrs["block_size"].as_int())

    @classmethod
    def read(cls, nodes) -> BlockQuantized:
        """Our layout (unsigned codes, packed low nibble first) of a GatherBlockQuantized node's initializers,
        whichever of the operator's layouts (signed or unsigned, 4-bit types or packed uint8) they use."""
        import onnx_ir as ir

        node = nodes[0]
        data, _, scales, *rest = node.inputs
        zero = rest[0] if rest else None
        bits = bits_of(node)
        block = node.attributes["block_size"].as_int()
        signed = data.const_value.dtype in (ir.DataType.INT4, ir.DataType.INT8)
        if data.const_value.dtype in (ir.DataType.UINT4, ir.DataType.INT4):
            codes = data.const_value.numpy().astype(np.int16)  # unpacked, one value per element
        elif bits < 8:
            packed = data.const_value.numpy()
            codes = unpack(packed, packed.shape[1] * 8 // bits, bits).astype(np.int16)
        else:
            codes = data.const_value.numpy().astype(np.int16)
        n, m = codes.shape
        n_blocks = scales.const_value.shape[1]
        if zero is None:
            zeros = np.full((n, n_blocks), 0 if signed else 2 ** (bits - 1), np.int16)
        elif zero.const_value.dtype in (ir.DataType.UINT4, ir.DataType.INT4) or bits == 8:
            zeros = zero.const_value.numpy().astype(np.int16).reshape(n, -1)[:, :n_blocks]
        else:
            zeros = unpack(zero.const_value.numpy(), n_blocks, bits).astype(np.int16)
        if signed:  # shift to the unsigned codes our layout stores: same values
            half = 2 ** (bits - 1)
            codes, zeros = codes + half, zeros + half
        codes, zeros = codes.astype(np.uint8), zeros.astype(np.uint8)
        return BlockQuantized(pack(codes, bits), scales.const_value.numpy(), pack(zeros, bits), bits, block)

    def emit_lookup(self, b, stored: BlockQuantized, ids, form: str, name: str):
        if form not in LOOKUP_FORMS:
            raise ValueError(f"form={form!r} must be one of {LOOKUP_FORMS}")
        data = b.const(f"{name}/codes", stored.data)
        scales = b.const(f"{name}/scales", stored.scales)
        zeros = b.const(f"{name}/zero_points", stored.zero_points)
        if form == "contrib":
            b.graph.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
            return b.op("GatherBlockQuantized", [data, ids, scales, zeros], f"{name}/rows", domain=CONTRIB_DOMAIN,
                        gather_axis=0, quantize_axis=1, block_size=stored.block_size, bits=stored.bits)
        return standard_rows(b, stored, data, scales, zeros, ids, name)


class BlockInt8(BlockStorage):
    name = "int8"
    bits = 8
    plain_blocks = (128, 32)


class BlockInt4(BlockStorage):
    name = "int4"
    bits = 4
    plain_blocks = (128, 64, 32)


class BlockInt2(BlockStorage):
    """2-bit blocks (ONNX Runtime 1.31's GatherBlockQuantized runs bits=2 on CPU): a plain candidate of the
    chooser at about 11x (block 32) to 14x (block 128); on embedding tables codebooks usually beat them at
    those sizes (benchmarks/RESULTS.md), but a table whose rows are blocks of few levels may be where they
    win. Not a storage of U: MatMulNBits' 2-bit kernels are not what a head reads."""

    name = "int2"
    bits = 2
    factors = False
    head_op = None
    plain_blocks = (128, 64, 32)


# The block format of each bit width (the storage of a quantized U, read from its bits).
BLOCK_FORMATS: dict[int, type[BlockStorage]] = {cls.bits: cls for cls in (BlockInt8, BlockInt4, BlockInt2)}


def bits_of(node) -> int:
    """Bits per value of a GatherBlockQuantized node (its `bits` attribute, 4 when absent)."""
    return node.attributes["bits"].as_int() if "bits" in node.attributes else 4


def standard_rows(b, q: BlockQuantized, data, scales, zeros, ids, name: str, compute_dtype=None):
    """Rows `ids` of BlockQuantized storage `q` held in `data` (codes, (n, m*bits/8), or (n, blocks, bytes per
    block) as MatMulNBits keeps them), `scales` and `zeros`, decoded with opset-13 operators in the scales'
    dtype, or in `compute_dtype` (then the scales are cast first, exactly)."""
    import onnx_ir as ir

    n, m = q.shape
    n_blocks = q.n_blocks
    codes = b.op("Gather", [data, ids], f"{name}/row_codes")
    if len(data.shape) == 3:
        codes = b.op("Reshape", [codes, b.const(f"{name}/packed_shape", np.array([-1, m * q.bits // 8], np.int64))],
                     f"{name}/row_codes_2d")
    row_zeros = b.op("Gather", [zeros, ids], f"{name}/row_zero_points")
    if q.bits < 8:
        codes = _unpack(b, codes, m, q.bits, f"{name}/codes")
        row_zeros = _unpack(b, row_zeros, n_blocks, q.bits, f"{name}/zero_points")
    row_scales = b.op("Gather", [scales, ids], f"{name}/row_scales")
    if compute_dtype is not None:
        row_scales = b.cast(row_scales, compute_dtype, f"{name}/row_scales_cast", q.scales.dtype)
    dtype = ir.DataType.from_numpy(np.dtype(compute_dtype or q.scales.dtype))
    blocks = b.op("Reshape", [b.op("Cast", [codes], f"{name}/codes_float", to=dtype),
                              b.const(f"{name}/block_shape", np.array([-1, n_blocks, q.block_size], np.int64))],
                  f"{name}/code_blocks")
    centred = b.op("Sub", [blocks, b.op("Unsqueeze", [b.op("Cast", [row_zeros], f"{name}/zeros_float", to=dtype),
                                                      b.const(f"{name}/axis2", np.array([2], np.int64))],
                                        f"{name}/zeros_col")], f"{name}/centred")
    scaled = b.op("Mul", [centred, b.op("Unsqueeze", [row_scales, b.const(f"{name}/axis2_s", np.array([2], np.int64))],
                                        f"{name}/scales_col")], f"{name}/scaled")
    return b.op("Reshape", [scaled, b.const(f"{name}/row_shape", np.array([-1, m], np.int64))], f"{name}/rows")


def _unpack(b, packed, length: int, bits: int, name: str):
    """(T, ceil(length * bits / 8)) uint8, 8/bits values a byte, the first in the lowest bits -> (T, length) int32
    (opset-13 integer Div and Mod: no bit operators needed)."""
    import onnx_ir as ir

    per, base = 8 // bits, 1 << bits
    wide = b.op("Cast", [packed], f"{name}/int32", to=ir.DataType.INT32)
    last = b.const(f"{name}/last_axis", np.array([-1], np.int64))
    parts = []
    for i in range(per):
        shifted = wide if i == 0 else b.op("Div", [wide, b.const(f"{name}/step{i}", np.array(base ** i, np.int32))],
                                           f"{name}/shifted{i}")
        value = shifted if i == per - 1 else b.op("Mod", [shifted, b.const(f"{name}/base", np.array(base, np.int32))],
                                                  f"{name}/value{i}", fmod=0)
        parts.append(b.op("Unsqueeze", [value, last], f"{name}/value{i}_col"))
    grouped = b.op("Concat", parts, f"{name}/grouped", axis=-1)
    width = per * (-(-length // per))  # a static width: a branch may have no rows, and [0, -1] cannot reshape those
    flat = b.op("Reshape", [grouped, b.const(f"{name}/grouped_shape", np.array([-1, width], np.int64))],
                f"{name}/values")
    if length == width:
        return flat
    return b.op("Slice", [flat, b.const(f"{name}/start", np.array([0], np.int64)),
                          b.const(f"{name}/end", np.array([length], np.int64)),
                          b.const(f"{name}/axis1", np.array([1], np.int64))], f"{name}/cut")
