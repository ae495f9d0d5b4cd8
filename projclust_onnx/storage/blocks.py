"""Block-quantized storage, in ONNX Runtime's GatherBlockQuantized layout (what MatMulNBitsQuantizer emits).

Each row is cut into blocks of `block_size` values; a block holds unsigned `bits`-bit codes, a
float16 scale and a zero point (quantization.BlockQuantized). Two lookup forms read the same
tensors::

    "contrib":  com.microsoft.GatherBlockQuantized(codes, ids, scales, zero points)  -> rows (T, m)
    "standard": Gather(codes, ids), Gather(scales, ids), Gather(zero points, ids)
                [4-bit: Cast(int32), Mod 16 / Div 16, interleave]  -> codes (T, m), zeros (T, m/B)
                (Cast(codes) - Cast(zeros)) * scales, per block of B                  -> rows (T, m)

A tied head multiplies U in this storage with com.microsoft.MatMulNBits (the same bytes, 3-D).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from projclust_onnx.storage.base import CONTRIB_DOMAIN, LOOKUP_FORMS, StorageFormat
from projclust_onnx.storage.quantization import BlockQuantized, block_quantized_bytes, pack4, unpack4


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
        return lookup.outputs[0], [lookup], f"{cls.name} block {attrs['block_size'].as_int()}"

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
        elif bits == 4:
            packed = data.const_value.numpy()
            codes = unpack4(packed, packed.shape[1] * 2).astype(np.int16)
        else:
            codes = data.const_value.numpy().astype(np.int16)
        n, m = codes.shape
        n_blocks = scales.const_value.shape[1]
        if zero is None:
            zeros = np.full((n, n_blocks), 0 if signed else 2 ** (bits - 1), np.int16)
        elif zero.const_value.dtype in (ir.DataType.UINT4, ir.DataType.INT4) or bits == 8:
            zeros = zero.const_value.numpy().astype(np.int16).reshape(n, -1)[:, :n_blocks]
        else:
            zeros = unpack4(zero.const_value.numpy(), n_blocks).astype(np.int16)
        if signed:  # shift to the unsigned codes our layout stores: same values
            half = 2 ** (bits - 1)
            codes, zeros = codes + half, zeros + half
        codes, zeros = codes.astype(np.uint8), zeros.astype(np.uint8)
        if bits == 4:
            codes, zeros = pack4(codes), pack4(zeros)
        return BlockQuantized(codes, scales.const_value.numpy(), zeros, bits, block)

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
    if q.bits == 4:
        codes = _unpack4(b, codes, m, f"{name}/codes")
        row_zeros = _unpack4(b, row_zeros, n_blocks, f"{name}/zero_points")
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


def _unpack4(b, packed, length: int, name: str):
    """(T, ceil(length/2)) uint8, two 4-bit values a byte, low nibble first -> (T, length) int32."""
    import onnx_ir as ir

    wide = b.op("Cast", [packed], f"{name}/int32", to=ir.DataType.INT32)
    sixteen = b.const(f"{name}/sixteen", np.array(16, np.int32))
    low = b.op("Mod", [wide, sixteen], f"{name}/low", fmod=0)
    high = b.op("Div", [wide, sixteen], f"{name}/high")
    last = b.const(f"{name}/last_axis", np.array([-1], np.int64))
    pairs = b.op("Concat", [b.op("Unsqueeze", [low, last], f"{name}/low_col"),
                            b.op("Unsqueeze", [high, last], f"{name}/high_col")], f"{name}/pairs", axis=-1)
    width = 2 * ((length + 1) // 2)  # a static width: a branch may have no rows, and [0, -1] cannot reshape those
    flat = b.op("Reshape", [pairs, b.const(f"{name}/pairs_shape", np.array([-1, width], np.int64))], f"{name}/values")
    if length % 2 == 0:
        return flat
    return b.op("Slice", [flat, b.const(f"{name}/start", np.array([0], np.int64)),
                          b.const(f"{name}/end", np.array([length], np.int64)),
                          b.const(f"{name}/axis1", np.array([1], np.int64))], f"{name}/cut")
