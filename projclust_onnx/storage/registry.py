"""The storage formats, in one list that budget, chooser, finder, CLI, config and report read.

To add a format: write its class (storage/base.StorageFormat) in a module of its own and add it to
FORMATS below; the order is the order the chooser tries plain storages and the CLI lists choices.
Everything below reads FORMATS when it is called, so a format added to it is known everywhere.
"""

from __future__ import annotations

import enum

from projclust_onnx.storage.base import StorageFormat
from projclust_onnx.storage.blocks import BlockInt2, BlockInt4, BlockInt8
from projclust_onnx.storage.codebook import CodebookStorage
from projclust_onnx.storage.factorization import Factors
from projclust_onnx.storage.float import FloatStorage
from projclust_onnx.storage.per_tensor import PerTensorInt8

FORMATS: tuple[type[StorageFormat], ...] = (FloatStorage, PerTensorInt8, BlockInt8, BlockInt4, BlockInt2,
                                            CodebookStorage, Factors)

FLOAT_LABEL = FloatStorage().label  # how a float table's storage is named ("stored float")
FLOAT_U = FloatStorage.name  # the --quantize value of U in the table's own float type

# What U of a factorization may be stored in: the values of --quantize, float first.
QUANTIZE: tuple[str, ...] = tuple(dict.fromkeys(cls.name for cls in FORMATS if cls.factors))


def get(name: str, block_size: int | None = None) -> StorageFormat:
    """The format called `name`; where a name has a blocked and an unblocked format (int8), block_size
    picks: None for the unblocked one. Formats without blocks ignore block_size."""
    plain = [cls for cls in FORMATS if not cls.sized and not cls.branches]  # named storages of an (n, m) matrix
    named = [cls for cls in plain if cls.name == name]
    if not named:
        raise ValueError(f"storage {name!r} is not one of {sorted({cls.name for cls in plain})}")
    if len(named) > 1:
        named = [cls for cls in named if cls.blocked == (block_size is not None)] or named
    cls = named[0]
    return cls(block_size if cls.blocked else None)


def factor_storage(name: str, block_size: int | None) -> StorageFormat:
    """The storage of U called `name` (a --quantize value), in blocks of block_size where it is blocked."""
    for cls in FORMATS:
        if cls.factors and cls.name == name:
            return cls(block_size if cls.blocked else None)
    raise ValueError(f"quantize={name!r} must be one of {QUANTIZE}")


def bits_of(name: str) -> int | None:
    """Bits per value of the storage of U called `name` (None: float)."""
    return factor_storage(name, 1).bits


def u_label(name: str, block_size: int | None, dtype_name: str) -> str:
    """How every message names the storage of U called `name` (a --quantize value): the table's dtype for
    float, else the format's label ("int4 blocks of 32", ...)."""
    storage = factor_storage(name, block_size)
    return dtype_name if storage.bits is None else storage.label


def name_for_bits(bits: int | None) -> str:
    """The --quantize value storing `bits` per value (None: float), e.g. to keep an input table's bits."""
    for cls in FORMATS:
        if cls.factors and cls.bits == bits:
            return cls.name
    raise ValueError(f"no storage of U holds {bits} bits per value")


def methods() -> tuple[str, ...]:
    """Every --method: the formats' own (the factors' first, the default)."""
    found = [name for cls in FORMATS if cls.branches for name in cls.methods]
    return tuple(dict.fromkeys(found + [name for cls in FORMATS if not cls.branches for name in cls.methods]))


def default_method() -> str:
    return methods()[0]


def method_format(method: str) -> type[StorageFormat]:
    """The format that --method `method` stores the table in."""
    for cls in FORMATS:
        if method in cls.methods:
            return cls
    raise ValueError(f"method {method!r} is not one of {methods()}")


def whole_table_methods() -> tuple[str, ...]:
    """The methods that store the whole table in one format sized to the budget (no factors)."""
    return tuple(name for cls in FORMATS if not cls.branches for name in cls.methods)


def methods_help() -> str:
    """What --help says of the methods, in their order."""
    return "; ".join(dict.fromkeys(method_format(name).help for name in methods()))


def format_class(name: str) -> type[StorageFormat]:
    """The format class called `name` (a report's `quantize`), sized ones included."""
    for cls in FORMATS:
        if cls.name == name:
            return cls
    raise ValueError(f"storage {name!r} is not one of {sorted({cls.name for cls in FORMATS})}")


def format_of(stored) -> StorageFormat:
    """The format of a stored table (what a format's encode returned), factorizations included."""
    for cls in FORMATS:
        if cls.holds(stored):
            return cls.of(stored)
    raise TypeError(f"{type(stored).__name__} is not a stored table of any registered format")


def plain_storages(dim: int) -> list[StorageFormat]:
    """Every storage the chooser tries on a whole table of rows of `dim` values, in order."""
    found = [cls(block) for cls in FORMATS for block in cls.plain_blocks]
    return [fmt for fmt in found if fmt.fits_row(dim)]


def sized_storages(n: int, dim: int, budget_bytes: float, **options) -> list[StorageFormat]:
    """The instances of sized formats (codebooks) the chooser tries on an (n, dim) table within budget_bytes;
    `options` (device, seed, verbose, and tied: a tied head reads the table) go to each instance."""
    return [fmt for cls in FORMATS if cls.sized for fmt in cls.for_budget(n, dim, budget_bytes, **options)]


def factor_storages(block_sizes) -> list[StorageFormat]:
    """Every storage of U the chooser tries: float, then each quantized format at each block size."""
    return [cls(block) for cls in FORMATS if cls.factors for block in (block_sizes if cls.blocked else (None,))]


def recognise(lookup, readers: list):
    """(format class, (embeddings, nodes, format instance) or a rejection reason) for the first format whose
    lookup `lookup` is, else None."""
    for cls in FORMATS:
        found = cls.recognise(lookup, readers)
        if found is not None:
            return cls, found
    return None


class Part(enum.Enum):
    """A lookup that reads part of a table this tool already stored, not a word table."""

    CLUSTER_IDS = "cluster ids"  # the factors' cluster-id lookup
    CODES = "codes"  # uint8 codes read without DequantizeLinear (the standard form of blocks and codebooks)


# onnx_ir.DataType names of cluster ids (compared by name: --help does not load onnx_ir)
_ID_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "INT32", "INT64"})


def part_read_by(table) -> Part | None:
    """Which part of a stored table a Gather of the initializer `table` reads, if any: 1-D integers are
    cluster ids, a 2-D uint8 matrix is codes."""
    tensor = table.const_value
    if len(tensor.shape) == 1 and tensor.dtype.name in _ID_TYPES:
        return Part.CLUSTER_IDS
    if len(tensor.shape) == 2 and tensor.dtype.name == "UINT8":
        return Part.CODES
    return None
