"""StorageFormat: one way of storing an (n, m) matrix of float values, as one registered class.

A format knows its bytes for (n, m), how to encode and decode a matrix, how its lookup
looks in an existing graph (so the finder can read a table ONNX Runtime's quantizers
stored), how to emit a row lookup, and what a tied head can multiply it with. Budget,
chooser, finder, CLI choices and report all read the registry (storage.registry), so a
new format is one new module with one class, registered there, plus its tests.

Emitting goes through the passes' Builder (`b.op`, `b.const`, `b.cast`, `b.graph`), passed
in: this layer knows graph operators but not the passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

LOOKUP_FORMS = ("contrib", "standard")  # ONNX Runtime's contrib operators, or opset-13 operators only
CONTRIB_DOMAIN = "com.microsoft"


class StorageFormat(ABC):
    """A storage of an (n, m) matrix; instances carry the block size of blocked formats.

    Class attributes:
        name: what `--quantize`, the config and the reports call it ("none", "int8", "int4").
        bits: bits per stored value; None for the table's own float type.
        blocked: whether values are quantized in blocks along each row (block_size set).
        factors: whether it may store U of a factorization (a `--quantize` choice).
        flat_ids: whether its lookup reads 1-D ids only (the caller flattens them and reshapes the rows).
        sized: whether the chooser sizes instances to its budget (for_budget) instead.
        plain_blocks: the block sizes (None: unblocked) at which the chooser tries this format on a whole
            table, in the order they are tried; empty: never stored plainly.
        head_op: the operator a tied head multiplies U with in this storage (None: a head cannot read it).
    """

    name: ClassVar[str]
    bits: ClassVar[int | None] = None
    blocked: ClassVar[bool] = False
    factors: ClassVar[bool] = False
    flat_ids: ClassVar[bool] = False
    plain_blocks: ClassVar[tuple[int | None, ...]] = ()
    head_op: ClassVar[str | None] = None
    sized: ClassVar[bool] = False  # instances are sized to a byte budget (for_budget), not picked from plain_blocks

    def __init__(self, block_size: int | None = None) -> None:
        if self.blocked and block_size is None:
            raise ValueError(f"{self.name} storage needs a block_size")
        self.block_size = block_size if self.blocked else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_size={self.block_size})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.block_size == other.block_size

    def __hash__(self) -> int:
        return hash((type(self), self.block_size))

    @property
    def label(self) -> str:
        """How reports and the finder name the storage: "float", "int8 per-tensor", "int4 block 32"."""
        return self.name

    def rank_step(self) -> int:
        """The ranks U may take in this storage are multiples of this."""
        return 1

    def fits_row(self, m: int) -> bool:
        """Whether a row of m values can be stored (ONNX Runtime's layouts want whole blocks)."""
        return True

    @classmethod
    def for_budget(cls, n: int, d: int, budget_bytes: float, **options) -> list[StorageFormat]:
        """The instances the chooser tries on an (n, d) table within budget_bytes (sized formats only);
        `options` (device, seed, verbose) go to their constructor."""
        return []

    @abstractmethod
    def nbytes(self, n: int, m: int, itemsize: int = 4) -> int:
        """Bytes of an (n, m) matrix in this storage (`itemsize`: the float type's, for float storage)."""

    @abstractmethod
    def encode(self, matrix: np.ndarray, sample_weight: np.ndarray | None = None) -> Any:
        """The stored form of `matrix`, of shape (n, m); formats that fit their values (codebooks) weight row i
        by sample_weight[i], the others ignore it."""

    @staticmethod
    @abstractmethod
    def decode(stored: Any) -> np.ndarray:
        """The values the runtime computes from the stored form, as float32 (n, m)."""

    @staticmethod
    def decoded_dtype(stored: Any) -> np.dtype:
        """The float type its lookup yields (before any cast to the model's)."""
        return np.dtype(np.float32)

    @classmethod
    def holds(cls, stored: Any) -> bool:
        """Whether `stored` (what encode returns) is in this format."""
        return False

    @classmethod
    def of(cls, stored: Any) -> StorageFormat:
        """The format instance that describes `stored` (block size read from it)."""
        return cls(getattr(stored, "block_size", None))

    @classmethod
    def recognise(cls, lookup, readers: list) -> tuple[Any, list, str] | None:
        """If the graph node `lookup` (with the nodes reading its output) reads a table stored in this format:
        (embeddings value, nodes a rewrite replaces, label); else None."""
        return None

    @classmethod
    def read(cls, nodes: list) -> Any:
        """The stored form held by the initializers of a recognised lookup's `nodes`."""
        raise NotImplementedError(f"{cls.name} storage is not read from graphs")

    @abstractmethod
    def emit_lookup(self, b, stored: Any, ids, form: str, name: str):
        """Rows `ids` (1-D) of `stored`, decoded, as graph nodes added through builder `b`: a (T, m) value."""
