"""Codebook storage (product quantization, Jegou et al. 2011): each row as m one-byte codes into m codebooks.

A row of d values is cut into m sub-vectors (lengths d/m rounded, the longer ones first);
sub-vector i is stored as the index of its nearest of 2^b centroids in codebook i, fitted by
weighted k-means (storage/kmeans.py) on the rows the calibration text lands on. Centroids are
float16; on a rotation to r dimensions they are int8, each coordinate's scale folded into its
basis vector's float32 scale, so the int8 centroids cost no operator and the bytes they save
buy more sub-vectors.
Bytes: n*m codes + m * 2^b * s centroids (s = ceil(r/m); 2 bytes each, 1 on a rotation),
plus r int32 column positions when sub-vectors differ in length, plus r*d + 4r for a
rotation to r dimensions (int8, a float32 scale each), plus the lookup's offsets and shape
(4m + 16); so m, and with it the size, can be any number up to r/2. ONNX Runtime has no
codebook operator and needs none; the lookup is opset-13 operators only, for every runtime
the browser's included::

    Gather(codes (n, m) uint8, ids) -> Cast(int32) + offsets (i * 2^b)
    -> Gather(codebooks (m * 2^b, s) float16 | int8) -> Reshape (T, m * s) [-> Gather(columns, axis=1)]
    [-> Cast -> MatMul(Cast(rotation) * scales)] -> rows (T, d)

A tied head multiplies the table this lookup decodes to (passes/quantize_embedding.py), not the
codes (head_op None). Variants measured and not offered because they lose at equal bytes (4-bit
codes packed two a byte, a residual stage, projective clustering as the coarse stage): see
benchmarks/study_codebook_variants.py and its figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from projclust_onnx.common.progress import bar
from projclust_onnx.storage.base import LOOKUP_FORMS, StorageFormat
from projclust_onnx.storage.subvectors import ROWS as _ROWS
from projclust_onnx.storage.subvectors import layout, lengths, subvectors

CODE_BITS = (4, 5, 6, 7, 8)  # 2^b centroids per codebook; codes are one byte each
# Leading directions a tied head's codebooks keep as float16 scalars: on a tied GPT-2 (30522 x 128) at 8x,
# greedy agreement with the original 0.49 with none, 0.96 with 1 and 0.99 with 4 (the table's largest
# direction held 88% of its energy; codes alone put 13% of their error there, where the head's hidden
# states are large)
TIED_HEAD_LEADING = 4
ROTATION_ROUNDS = 6  # OPQ rounds refining a rotation (storage/rotation.py)


@dataclass
class Codebooks:
    """An (n, d) matrix as codes (n, m) into codebooks (m, 2^bits, s); `columns` (d,) places column c of a row at
    position columns[c] of the (m * s) concatenated centroids, None when m divides d. `leading` (n, t): each row's
    coordinates on the rotation's first t directions, as float16 scalars (the codes cover the other r - t)."""

    codes: np.ndarray  # uint8 (n, m)
    codebooks: np.ndarray  # float16, or int8 on a rotation, (m, 2^bits, s); shorter sub-vectors padded with zeros
    columns: np.ndarray | None  # int32 (r,)
    bits: int
    rotation: np.ndarray | None = None  # int8 (r, d): rows are (centroids)[:, columns] @ (rotation * scales)
    rotation_scales: np.ndarray | None = None  # float32 (or float16) (r, 1), one per basis vector
    leading: np.ndarray | None = None  # float16 (n, t): coordinates on the first t basis vectors, not coded

    @property
    def m(self) -> int:
        return self.codebooks.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        if self.rotation is not None:
            return self.codes.shape[0], self.rotation.shape[1]
        d = self.codebooks.shape[0] * self.codebooks.shape[2] if self.columns is None else len(self.columns)
        return self.codes.shape[0], d

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + sum(a.nbytes for a in (self.codebooks, self.columns, self.rotation,
                                                          self.rotation_scales, self.leading) if a is not None) \
            + _lookup_constants(self.m)

    @property
    def rank(self) -> int | None:
        return None if self.rotation is None else self.rotation.shape[0]

    @property
    def n_params(self) -> int:
        """Values stored (codes, centroid entries, rotation entries): what the report counts as parameters."""
        return self.codes.size + self.codebooks.size + (0 if self.rotation is None else self.rotation.size) \
            + (0 if self.leading is None else self.leading.size)

    def rows(self, index) -> Codebooks:
        return Codebooks(self.codes[index], self.codebooks, self.columns, self.bits, self.rotation,
                         self.rotation_scales, None if self.leading is None else self.leading[index])

    def basis(self) -> np.ndarray:
        """The (r, d) rotation the runtime multiplies with, as float32."""
        return self.rotation.astype(np.float32) * self.rotation_scales.astype(np.float32)

    def dequantize(self) -> np.ndarray:
        m, _, s = self.codebooks.shape
        flat = self.codebooks.reshape(-1, s)[self.codes.astype(np.int64) + np.arange(m) * self.codebooks.shape[1]]
        rows = flat.reshape(len(self.codes), m * s).astype(np.float32)
        rows = rows if self.columns is None else rows[:, self.columns]
        if self.leading is not None:
            rows = np.concatenate([self.leading.astype(np.float32), rows], axis=1)
        return rows if self.rotation is None else rows @ self.basis()


EXACT_SHARE = 0.01  # a row with this share of the total weight gets centroids of its own


def _weighted_gram(X: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """sum_i w_i x_i x_i^T in float64, summed a block of float32 rows at a time (no table-sized copy)."""
    gram = np.zeros((X.shape[1], X.shape[1]))
    for start in range(0, len(X), _ROWS):
        rows = X[start:start + _ROWS]
        weighted = rows if w is None else rows * w[start:start + _ROWS, None].astype(np.float32)
        gram += (weighted.T @ rows).astype(np.float64)
    return gram


def exact_rows(sample_weight: np.ndarray | None, n_centroids: int) -> np.ndarray:
    """The rows kept exactly (a centroid of their own in every sub-vector): those carrying at least 1% of the
    total weight, heaviest first, at most 1/8 of the centroids. With the tool's weights these are the special
    tokens ([CLS], [SEP], ...: `special_token_weight` times the rest of the table each), which occur in every
    input; a row that heavy would pull a shared centroid onto itself anyway."""
    if sample_weight is None:
        return np.zeros(0, np.int64)
    w = np.asarray(sample_weight, np.float64)
    if not w.sum() > 0:
        return np.zeros(0, np.int64)
    heavy = np.flatnonzero((w > 0) & (w >= EXACT_SHARE * w.sum()))
    return heavy[np.argsort(-w[heavy], kind="stable")][: n_centroids // 8]


def codebook_bytes(n: int, d: int, m: int, bits: int, rank: int | None = None, leading: int = 0) -> int:
    """Bytes of an (n, d) table as m one-byte codes a row into codebooks of 2^bits centroids: float16, or on a
    rotation to `rank` dimensions (int8, a float32 scale per basis vector) int8; `leading` of those dimensions
    as float16 scalars a row, the codes covering the rest."""
    r = (d if rank is None else rank) - leading  # the coded dimensions
    s, columns = layout(r, m)
    rotation = 0 if rank is None else rank * d + 4 * rank
    centroid = 2 if rank is None else 1
    return n * m + m * (1 << bits) * s * centroid + (0 if columns is None else 4 * r) + rotation \
        + 2 * n * leading + _lookup_constants(m)


def codebook_fit_bytes(n: int, d: int) -> int:
    """Bytes a codebook fit of an (n, d) table needs beside the table itself, at the largest m tried (d/2):
    the rows as padded sub-vectors (at most 1.5 d values a row), the k-means' sample of them, the uint8 codes,
    per-row weights and costs, and the blocks of distances and rows."""
    from projclust_onnx.storage.kmeans import _BLOCK_ELEMENTS, _SAMPLE_ROWS

    width = d + d // 2
    return 4 * n * width + 4 * min(n, _SAMPLE_ROWS) * width + n * (d // 2) + 16 * n + 8 * _BLOCK_ELEMENTS * 4 \
        + 3 * 4 * _ROWS * d


def _lookup_constants(m: int) -> int:
    """Bytes of the lookup's own constants: the int32 centroid offsets and the int64 row shape."""
    return 4 * m + 16


def eigen_allocation(eigenvalues: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """OPQ's eigenvalue allocation (Ge et al. 2013): the principal directions, largest first, each to the
    sub-vector with room whose product of eigenvalues is smallest, so every sub-vector gets a like share of
    the variance. Returns the directions in sub-vector order (concatenated)."""
    values = np.asarray(eigenvalues, np.float64)
    floor = values[values > 0].min() if (values > 0).any() else 1.0
    logs, groups = np.zeros(len(lengths)), [[] for _ in lengths]
    for i, value in enumerate(values):
        room = [g for g in range(len(lengths)) if len(groups[g]) < lengths[g]]
        g = min(room, key=lambda g: logs[g])
        groups[g].append(i)
        logs[g] += np.log(max(value, floor) / floor)  # >= 0 whatever the scale: an empty sub-vector is filled first
    return np.array([i for group in groups for i in group], dtype=np.int64)


class CodebookStorage(StorageFormat):
    """m sub-vectors of 2^bits centroids each, optionally on a learned rotation.

    `m` is the instance's size parameter, so one format covers every byte count from about d/2 bytes a row
    down to one; the chooser sizes m to its budget (for_budget). `rank` r: the rows are first rotated onto
    their r leading principal directions (of the weighted second moment; an (r, d) matrix in int8 with a
    float32 scale per direction; OPQ's eigenvalue allocation spreads the variance evenly over the
    sub-vectors); then `rounds` OPQ rounds on a sample of rows (storage/rotation.py) turn that basis
    towards where the codebooks lose least, the k-means then warm-started from the last round; its
    centroids are int8, their steps folded into the basis scales.
    None: no rotation (tiny tables, where the matrix would cost more than it saves) and float16 centroids.
    `weight_power`: the k-means weights are the calibration weights to this power (below 1: full weights
    chase the calibration text's frequent tokens at the cost of the rest). Rows
    carrying 1% of the weight or more (the special tokens) get centroids of their own (exact_rows): exact
    up to float16, or on a rotation up to the int8 steps and what a rotation to r < d drops (on MiniLM
    at 32x: 0.6-3.5% relative error, against 0.02-0.18 by weight alone; restoring them exactly left the
    fine-food cosine unchanged to four digits). `leading` t: the rows' coordinates on the t largest
    directions are stored as float16 scalars, the codes covering the rest. A tied head needs them
    (TIED_HEAD_LEADING): it multiplies every row by hidden states that lie along those directions.
    """

    name = "codebook"
    flat_ids = True  # rows come out (T, d)
    bits: ClassVar[int] = 8
    sized = True  # the chooser picks the instances for its budget (for_budget)
    methods = ("codebook",)
    help = ("codebook: product quantization of the table (one-byte codes into codebooks, on a learned and "
            "refined rotation), sized to --compression or --target-ratio")

    @classmethod
    def plural(cls) -> str:
        return "codebooks"

    @classmethod
    def smallest_phrase(cls) -> str:
        return "one sub-vector of codes and its codebook"

    @classmethod
    def smallest_bytes(cls, n: int, d: int) -> int:
        return codebook_bytes(n, d, 1, 8)

    @classmethod
    def fit_bytes(cls, n: int, d: int) -> int:
        return codebook_fit_bytes(n, d)

    def lookup_form(self, form: str, tied: bool) -> str | None:
        return "standard (tied head)" if tied else "standard (codebooks)"

    @classmethod
    def summary_method(cls, report) -> str:
        return f"codebooks ({report.storage_after})"

    @classmethod
    def candidate_label(cls, candidate, storage_label: str) -> str:
        return storage_label

    def __init__(self, m: int, bits: int = 8, rank: int | None = None, *, leading: int = 0, weight_power: float = 0.5,
                 rounds: int = ROTATION_ROUNDS, seed: int = 0, device: str = "auto", verbose: bool = False) -> None:
        if bits not in CODE_BITS:
            raise ValueError(f"bits={bits} must be one of {CODE_BITS}")
        if m < 1 or (rank is not None and not m <= rank):
            raise ValueError(f"m={m} sub-vectors must lie in 1..rank (rank={rank})")
        if rounds < 0:
            raise ValueError(f"rounds={rounds} of the rotation's refinement must be >= 0")
        if leading and (rank is None or not 0 < leading <= rank - m):
            raise ValueError(f"leading={leading} directions need a rotation with room for them beside the m={m} "
                             f"sub-vectors (rank={rank})")
        super().__init__(None)
        self.m, self.bits, self.rank, self.leading = int(m), int(bits), rank, int(leading)
        self.weight_power, self.rounds, self.seed, self.device, self.verbose = weight_power, rounds, seed, device, \
            verbose

    def __repr__(self) -> str:
        leading = f", leading={self.leading}" if self.leading else ""
        return f"CodebookStorage(m={self.m}, bits={self.bits}, rank={self.rank}{leading})"

    def _key(self) -> tuple:
        return self.m, self.bits, self.rank, self.leading

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self), *self._key()))

    @property
    def label(self) -> str:
        rotation = f", rotation to {self.rank}" if self.rank is not None else ""
        leading = f", {self.leading} leading in float16" if self.leading else ""
        return f"codebook {self.m} x {self.bits}-bit{rotation}{leading}"

    def fits_row(self, m: int) -> bool:
        return self.m <= (m if self.rank is None else min(self.rank, m))

    def nbytes(self, n: int, m: int, itemsize: int = 4) -> int:
        return codebook_bytes(n, m, self.m, self.bits, self.rank, self.leading)

    @classmethod
    def for_budget(cls, n: int, d: int, budget_bytes: float, leading: int = 0, tied: bool = False,
                   **options) -> list[CodebookStorage]:
        """For each rotation tried, the largest m (up to half the rotated dimensions: a sub-vector of one value is
        what int8 quantization stores, at less cost) that fits budget_bytes at 8 bits. Rotations: onto all d
        directions, and onto 2/3 of them (at high ratios dropping the weakest third can cost less than the
        sub-vectors its bytes buy); no rotation only where a full one would take over 1/8 of the budget.
        `leading` directions as float16 scalars (rotations only); `tied` (a tied head reads the decoded
        table): TIED_HEAD_LEADING of them."""
        leading = TIED_HEAD_LEADING if tied else leading
        found = []
        for rank in dict.fromkeys((None, d, d * 2 // 3)):
            if rank is None and ((d * d + 2 * d) * 8 <= budget_bytes or leading):
                continue
            if rank is not None and (rank < 1 or rank * d + 4 * rank >= budget_bytes):
                continue
            if rank is not None and rank - leading < 2:
                continue
            top = max(1, ((d if rank is None else rank) - leading) // 2)  # sub-vectors of one value: 8-bit scalars
            fits = [m for m in range(1, top + 1) if codebook_bytes(n, d, m, 8, rank, leading) <= budget_bytes]
            if fits:
                found.append(cls(max(fits), 8, rank, leading=leading, **options))
        return found

    def encode(self, matrix: np.ndarray, sample_weight: np.ndarray | None = None) -> Codebooks:
        # torch comes with the fit, not with the registry: the CLI's --help imports this module
        from projclust_onnx.storage.kmeans import KMEANS_ITERATIONS, nearest_codes, subvector_kmeans
        from projclust_onnx.storage.rotation import LLOYD_STEPS, refine_rotation

        X = np.asarray(matrix, dtype=np.float32)
        n, d = X.shape
        if self.rank is not None and self.rank > d or self.m > (d if self.rank is None else self.rank):
            raise ValueError(f"rank={self.rank} and m={self.m} must not exceed the rows' {d} values (m <= rank <= d)")
        w = None if sample_weight is None else np.asarray(sample_weight, np.float64) ** self.weight_power
        rotation, to_coordinates, init = None, None, None
        if self.rank is not None:  # principal directions of the weighted second moment, allocated
            values, vectors = np.linalg.eigh(_weighted_gram(X, w))
            values, vectors = values[::-1][: self.rank], vectors[:, ::-1][:, : self.rank]
            t = self.leading  # the largest directions first, kept as scalars; the rest allocated
            order = t + eigen_allocation(values[t:], lengths(self.rank - t, self.m))
            basis = vectors[:, np.concatenate([np.arange(t), order])].T.astype(np.float32)  # (r, d)
            if self.rounds:
                # the coded directions refined on the rows less their leading part (which stays as it is)
                coded = X if not t else X - (X @ basis[:t].T) @ basis[:t]
                with bar(self.verbose, f"rotation of {self.m} sub-vectors", self.rounds) as tick:
                    refined, init, _ = refine_rotation(coded, w, basis[t:], self.m, 1 << self.bits, self.rounds,
                                                       seed=self.seed, device=self.device, progress=tick,
                                                       exact=exact_rows(sample_weight, min(n, 1 << self.bits)))
                basis = np.concatenate([basis[:t], refined])
                del coded
            scales = np.abs(basis).max(1, keepdims=True) / 127
            scales[scales == 0] = 1
            rotation = np.clip(np.round(basis / scales), -127, 127).astype(np.int8)
            stored = rotation.astype(np.float32) * scales
            # coordinates on the stored basis: least squares, which its rounding leaves nearly orthonormal
            to_coordinates = np.linalg.pinv(stored.astype(np.float64)).astype(np.float32)
        r = (d if self.rank is None else self.rank) - self.leading
        s, columns = layout(r, self.m)
        leading = None
        if self.leading:  # float16 scalars: the coordinates on the stored basis's first t vectors
            leading = (X @ to_coordinates[:, :self.leading]).astype(np.float16)
            to_coordinates = np.ascontiguousarray(to_coordinates[:, self.leading:])
        parts = subvectors(X, self.m, to_coordinates)
        # warm-started from the rotation's rounds, whose Lloyd steps count towards the k-means' total
        steps = KMEANS_ITERATIONS if init is None else max(KMEANS_ITERATIONS - self.rounds * LLOYD_STEPS, 5)
        with bar(self.verbose, f"k-means of {self.m} sub-vectors (stops when settled)", steps) as tick:
            centroids, _ = subvector_kmeans(parts, 1 << self.bits, w, seed=self.seed, device=self.device,
                                            exact=exact_rows(sample_weight, min(n, 1 << self.bits)),
                                            max_iter=steps, progress=tick, codes=False, init=init)
        used = centroids.shape[1]  # fewer rows than centroids: the rest stay unused (zeros)
        if rotation is None:
            books = np.zeros((self.m, 1 << self.bits, s), np.float16)
            books[:, :used] = centroids
            if not np.isfinite(books).all():
                raise ValueError("the table's values exceed float16's range (65504), where codebooks are stored; "
                                 "use int8/int4 or factors for this table")
            codes = nearest_codes(parts, books[:, :used].astype(np.float32))  # to the stored centroids
            return Codebooks(codes.astype(np.uint8), books, columns, self.bits)
        # int8 centroids: each padded coordinate p in steps of its largest |centroid| / 127, a step folded
        # into the float32 scale of the basis vector that coordinate multiplies
        step = np.abs(centroids).max(1) / 127  # (m, s)
        step[step == 0] = 1
        books = np.zeros((self.m, 1 << self.bits, s), np.int8)
        books[:, :used] = np.clip(np.round(centroids / step[:, None]), -127, 127)
        codes = nearest_codes(parts, books[:, :used].astype(np.float32) * step[:, None])  # to the stored centroids
        position = columns if columns is not None else np.arange(r)
        folded = scales.astype(np.float32).copy()
        folded[self.leading:] *= step.reshape(-1)[position][:, None]
        return Codebooks(codes.astype(np.uint8), books, columns, self.bits, rotation, folded.astype(np.float32),
                         leading)

    @staticmethod
    def decode(stored: Codebooks) -> np.ndarray:
        return stored.dequantize()

    @staticmethod
    def decoded_dtype(stored: Codebooks) -> np.dtype:
        return np.dtype(np.float16 if stored.rotation is None else np.float32)

    @classmethod
    def holds(cls, stored) -> bool:
        return isinstance(stored, Codebooks)

    @classmethod
    def of(cls, stored: Codebooks) -> CodebookStorage:
        return cls(stored.m, stored.bits, stored.rank, leading=0 if stored.leading is None else
                   stored.leading.shape[1])

    def emit_lookup(self, b, stored: Codebooks, ids, form: str, name: str):
        import onnx_ir as ir

        if form not in LOOKUP_FORMS:
            raise ValueError(f"form={form!r} must be one of {LOOKUP_FORMS}")
        m, K, s = stored.codebooks.shape
        codes = b.op("Gather", [b.const(f"{name}/codes", stored.codes), ids], f"{name}/row_codes")
        index = b.op("Add", [b.op("Cast", [codes], f"{name}/row_codes_int", to=ir.DataType.INT32),
                             b.const(f"{name}/offsets", (np.arange(m) * K).astype(np.int32))], f"{name}/centroid_ids")
        parts = b.op("Gather", [b.const(f"{name}/codebooks", stored.codebooks.reshape(m * K, s)), index],
                     f"{name}/centroids")
        last = stored.columns is None and stored.rotation is None
        rows = b.op("Reshape", [parts, b.const(f"{name}/row_shape", np.array([-1, m * s], np.int64))],
                    f"{name}/rows" if last else f"{name}/padded_rows")
        if stored.columns is not None:
            last = stored.rotation is None
            rows = b.op("Gather", [rows, b.const(f"{name}/columns", stored.columns)],
                        f"{name}/rows" if last else f"{name}/coordinates", axis=1)
        if stored.rotation is None:
            return rows
        # A float32 product (ONNX Runtime's CPU MatMul has no float16 kernel everywhere). The int8 rotation is
        # decoded from constants only, so ONNX Runtime folds it at session start: 4 r d bytes in memory, r d
        # in the file.
        coordinates = b.op("Cast", [rows], f"{name}/coordinates_float", to=ir.DataType.FLOAT)
        if stored.leading is not None:  # the leading coordinates, gathered as stored, first
            lead = b.op("Gather", [b.const(f"{name}/leading", stored.leading), ids], f"{name}/row_leading")
            coordinates = b.op("Concat", [b.op("Cast", [lead], f"{name}/row_leading_float", to=ir.DataType.FLOAT),
                                          coordinates], f"{name}/all_coordinates", axis=1)
        rotation = b.op("Mul", [b.op("Cast", [b.const(f"{name}/rotation", stored.rotation)],
                                     f"{name}/rotation_float", to=ir.DataType.FLOAT),
                                b.op("Cast", [b.const(f"{name}/rotation_scales", stored.rotation_scales)],
                                     f"{name}/rotation_scales_float", to=ir.DataType.FLOAT)],
                        f"{name}/basis")
        return b.op("MatMul", [coordinates, rotation], f"{name}/rows")
