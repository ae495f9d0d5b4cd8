"""StorageFormat: one way of encoding an (n, m) matrix of float values, as one registered class.

A format knows its bytes for (n, m), how to fit (encode) and decode a matrix, how its lookup
looks in an existing graph (so the finder can read a table ONNX Runtime's quantizers
stored), how to emit a row lookup, what a tied head can multiply it with, and what the report
and `inspect` say of it. Budget, chooser, finder, config, CLI choices and report all read the
registry (storage.registry), so a new format is one new module with one class, registered
there, plus its tests. A format that names `methods` is a `--method` of its own: the whole
table is stored in it, sized to the budget (factors: storage/factorization.py, written as k
branches by the factor passes instead of one emitted lookup).

Emitting goes through the passes' Builder (`b.op`, `b.const`, `b.cast`, `b.graph`), passed
in: this layer knows graph operators but not the passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

LOOKUP_FORMS = ("contrib", "standard")  # ONNX Runtime's contrib operators, or opset-13 operators only
CONTRIB_DOMAIN = "com.microsoft"
PLAIN = "quantize"  # the report's method for a table stored whole in a format (no factors)


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
        methods: the `--method` values that store the whole table in this format, sized to the budget
            (empty: the format is only tried by the chooser, or stores U).
        branches: whether its rows come from k branches U @ V (the factor passes write it, tied heads
            rewritten with the same factors) rather than from one lookup emitted by emit_lookup.
        help: what `--help` says of its methods.
        plural: how messages name its instances ("codebooks").
    """

    name: ClassVar[str]
    bits: ClassVar[int | None] = None
    blocked: ClassVar[bool] = False
    factors: ClassVar[bool] = False
    flat_ids: ClassVar[bool] = False
    plain_blocks: ClassVar[tuple[int | None, ...]] = ()
    head_op: ClassVar[str | None] = None
    sized: ClassVar[bool] = False  # instances are sized to a byte budget (for_budget), not picked from plain_blocks
    methods: ClassVar[tuple[str, ...]] = ()
    branches: ClassVar[bool] = False
    help: ClassVar[str] = ""

    @classmethod
    def plural(cls) -> str:
        return f"{cls.methods[0] if cls.methods else cls.name} storages"

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
    def recognise(cls, lookup, readers: list) -> tuple[Any, list, StorageFormat] | str | None:
        """If the graph node `lookup` (with the nodes reading its output) reads a table stored in this format:
        (embeddings value, nodes a rewrite replaces, the format instance it is stored in); a reason where it
        is this format's lookup in a form the rewrite does not take; else None."""
        return None

    @classmethod
    def read(cls, nodes: list) -> Any:
        """The stored form held by the initializers of a recognised lookup's `nodes`."""
        raise NotImplementedError(f"{cls.name} storage is not read from graphs")

    @abstractmethod
    def emit_lookup(self, b, stored: Any, ids, form: str, name: str):
        """Rows `ids` (1-D) of `stored`, decoded, as graph nodes added through builder `b`: a (T, m) value."""

    # What a method of its own plans, fits and reports (formats with `methods`; defaults for plain storage).

    @classmethod
    def method_storages(cls, n: int, d: int, budget_bytes: float, tied: bool = False, **options) -> list:
        """The instances `--method` tries on an (n, d) table within budget_bytes: the sized ones for_budget
        gives, else its plain block sizes whose rows fit; `tied`: a tied head reads the decoded table."""
        if cls.sized:
            return cls.for_budget(n, d, budget_bytes, tied=tied, **options)
        found = [cls(block) for block in cls.plain_blocks]
        return [fmt for fmt in found if fmt.fits_row(d) and fmt.nbytes(n, d) <= budget_bytes]

    @classmethod
    def fixed_clusters(cls, method: str) -> tuple[int | None, str]:
        """(the number of clusters `method` needs, None: any; why, for a message that refuses another)."""
        return 1, "its storage is sized to the budget"

    @classmethod
    def smallest_phrase(cls) -> str:
        """What takes smallest_bytes, as a message says it ("... take for the n x d table")."""
        return f"the smallest of the {cls.plural()}"

    @classmethod
    def smallest_bytes(cls, n: int, d: int) -> int:
        """The fewest bytes any instance takes for an (n, d) table (what a too small budget is told)."""
        found = [cls(block) for block in cls.plain_blocks]
        return min((fmt.nbytes(n, d) for fmt in found if fmt.fits_row(d)), default=n * d)

    @classmethod
    def fit_bytes(cls, n: int, d: int) -> int:
        """Memory its fit of an (n, d) table needs at most: a float64 copy and the stored form."""
        return 3 * n * d * 8

    def report_fields(self, stored: Any, n: int, d: int) -> dict:
        """The report's fields for a table stored in this format (CompressionReport's names)."""
        return {"method": PLAIN, "n_clusters": None, "rank": None, "cluster_id_bytes": 0,
                "embedding_params_after": getattr(stored, "n_params", n * d), "quantize": self.name,
                "block_size": self.block_size, "storage": self.label}

    def lookup_form(self, form: str, tied: bool) -> str | None:
        """How the report names the lookup written (`form` asked)."""
        return "standard (tied head)" if tied else form

    @classmethod
    def summary_method(cls, report) -> str:
        """The summary's method row for a report of a table stored in this format."""
        return f"plain quantization, {report.quantize} ({report.storage_after})"

    @classmethod
    def candidate_label(cls, candidate, storage_label: str) -> str:
        """How the chooser's list names a candidate in this format."""
        return f"plain {storage_label}"
