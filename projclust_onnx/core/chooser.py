"""Pick the storage of a word table within a byte budget: plain quantization, SVD or projective clustering.

Every candidate that fits the budget (within 0.1%, so that quantize_dynamic's int8 table,
with its scale and zero point, counts as 4x) is built as it would be stored and scored
by the same measure: the larger of two relative reconstruction errors
sum_i w_i ||x_i - x'_i||^2 / sum_i w_i ||x_i||^2, one with w how often the calibration
text lands on each row (counts + smoothing), one with w uniform. A candidate must do
well where the calibration text says inputs land and over the whole table: factors
fitted to an out-of-domain calibration text (Austen for food reviews) otherwise won on
the weighted error and lost to plain 4-bit quantization on the real inputs. The fits
themselves use the full sample weights (special tokens included). The lowest score
wins, so where ONNX Runtime's own quantization is better at that size, that is what the
user gets.
The candidates:

- plain quantization of the table: quantize_dynamic's per-tensor int8, and block int8/int4
  (GatherBlockQuantized) at several block sizes;
- codebooks (storage/codebook.py): product quantization on a learned rotation, sized to the budget
  (CodebookStorage.for_budget), fitted with the sample weights;
- SVD (k = 1) and projective clustering (k in `clusters`), each with float U, and int8 and int4
  U in blocks of 32, 64 and 128 (fewer scales buy rank), at the largest rank that fits. One
  fit per k, at the largest of those ranks; the smaller ranks keep the clusters and truncate
  each cluster's basis (the leading eigenvectors of the same second moment), so what is
  scored is exactly what would be written.

A candidate that cannot win is not built: its score is at least the uniform error of the best
rank-min(k j, d) approximation of the table (k subspaces of rank j lie in one of rank k j,
quantized U or not), the tail of one spectrum computed up front; once a k is fitted and a
candidate's rows assigned, at least the energy beyond each cluster's best rank-j subspace
(clustering.cluster_tail). When a bound already exceeds the best score so far, the candidate
is listed with the bound and `pruned` (not quantized, refit nor scored), and a k whose every
storage is pruned by the first bound is not fitted.

A codebook rotated onto r < d directions loses at least the spectrum beyond rank r: the second
rotation tried (r = 2d/3) is not fitted when the first codebook already beats that.

The factors' bounds are loose where k j >= d (then the spectrum bounds nothing), and a full fit
of a large table at such a k takes minutes. So before it, k is fitted on a uniform sample of
8,192 rows (sample_estimate, seconds) and scored on that sample. That in-sample error is
optimistic (the subspaces overfit their sample: 0.11 where the fit of every MiniLM row gets
0.15 at k=8, j=192), and a candidate whose estimate is at least twice the best score so far is
pruned without its fit (`bound` = "sample"). It is a heuristic for embedding tables, not a
proof (tests/test_chooser.py checks it on MiniLM's rows; a sample of sharply planted toy
subspaces can settle in a poor optimum the full fit avoids); tables too small for a sample to
save time are fitted in full.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from projclust_onnx.common.progress import bar
from projclust_onnx.core.budget import factorized_bytes, rank_for_bytes
from projclust_onnx.storage import registry
from projclust_onnx.storage.base import PLAIN
from projclust_onnx.storage.registry import factor_storages, format_of, get, plain_storages, sized_storages

logger = logging.getLogger(__name__)

SLACK = 1.001
_PIECE = 1 << 14  # rows dequantized at a time when a quantized table is scored (float64: 48 MiB at d = 384)
# Rows of the sample fit behind a k's estimate (at least 4 per fitted dimension, k * rank), and how far
# below its in-sample error a fit of every row is still taken to possibly reach (a safety factor: the
# in-sample error is optimistic already, but a sample can settle in a poorer optimum).
_ESTIMATE_ROWS = 8192
_ESTIMATE_MARGIN = 0.5


@dataclass
class Candidate:
    """One way to store the table, as built and scored."""

    method: str  # storage.base.PLAIN (the whole table in one format), or the factors' method (svd, projclust)
    quantize: str
    bytes: int
    error: float  # the score: max(calibration-weighted, uniform) relative error
    n_clusters: int | None = None
    rank: int | None = None
    block_size: int | None = None  # None with per-tensor int8
    pruned: bool = False  # not built: `error` is a lower bound (or, bound "sample", an estimate) that already lost
    storage: str = ""  # the storage's label where its name and block size do not say it all (codebooks)
    bound: str = ""  # what a pruned candidate's `error` is: "spectrum", "clusters" (bounds) or "sample" (estimate)

    @property
    def label(self) -> str:
        storage = self.storage
        if not storage:  # named by its format: float U by its --quantize name, the others by their label
            fmt = get(self.quantize, self.block_size)
            storage = fmt.name if fmt.bits is None else fmt.label
        plain = self.method == PLAIN
        label = (registry.format_class(self.quantize) if plain else registry.method_format(self.method)) \
            .candidate_label(self, storage)
        if plain:
            return label + " (not built: cannot win)" if self.pruned else label
        if self.pruned and self.bound == "sample":
            return label + " (not built: its fit on a sample of rows already loses)"
        return label + " (not built: cannot win)" if self.pruned else label


@dataclass
class Choice:
    """What the chooser compared and what it picked; `result` is the storage to write."""

    budget_bytes: int
    table_bytes: int
    best: Candidate
    candidates: list[Candidate]
    result: object = field(repr=False)

    @property
    def reason(self) -> str:
        runner_up = next((c for c in self.candidates if c is not self.best), None)
        text = (f"{self.best.label}: the lowest reconstruction error ({self.best.error:.4g}, the larger of the "
                f"calibration-weighted and the uniform one) of "
                f"{len(self.candidates)} candidates within {self.budget_bytes:,} bytes "
                f"(table {self.table_bytes:,} bytes / {self.table_bytes / self.budget_bytes:.3g})")
        if runner_up is not None:
            text += f"; next: {runner_up.label} ({runner_up.error:.4g})"
        return text

    def to_dict(self) -> dict:
        return {"budget_bytes": self.budget_bytes, "table_bytes": self.table_bytes, "reason": self.reason,
                "chosen": {**asdict(self.best), "label": self.best.label},
                "candidates": [{**asdict(c), "label": c.label} for c in self.candidates]}


def weighted_error(X: np.ndarray, approx, weights: np.ndarray | None) -> float:
    """max over w in {weights, uniform} of sum_i w_i ||x_i - a_i||^2 / sum_i w_i ||x_i||^2, in float64.

    `approx` is an array of X's shape, a factorization (anything with `row_errors(X)`) or a quantized
    table (`rows(index).dequantize()`), whose dense table is then never built whole; float64 is used a
    block of rows at a time."""
    X = np.asarray(X)
    if hasattr(approx, "row_errors"):
        row_err = approx.row_errors(X)
    elif isinstance(approx, np.ndarray):
        row_err = _row_norms2(X, approx)
    else:
        decode = format_of(approx).decode
        row_err = np.concatenate([_row_norms2(X[start:start + _PIECE],
                                              decode(approx.rows(slice(start, start + _PIECE))))
                                  for start in range(0, len(X), _PIECE)])
    row_energy = _row_norms2(X)
    uniform = float(row_err.sum() / row_energy.sum())
    if weights is None:
        return uniform
    w = np.asarray(weights, dtype=np.float64)
    return max(uniform, float((w * row_err).sum() / (w * row_energy).sum()))


def _row_norms2(X: np.ndarray, minus: np.ndarray | None = None, block: int = 1 << 16) -> np.ndarray:
    """||x_i - minus_i||^2 (or ||x_i||^2) per row, in float64 over blocks of rows."""
    out = np.empty(len(X))
    for start in range(0, len(X), block):
        rows = np.asarray(X[start:start + block], dtype=np.float64)
        if minus is not None:
            rows -= minus[start:start + block]
        out[start:start + block] = (rows * rows).sum(1)
    return out


def spectrum_tail(X: np.ndarray, block: int = 1 << 14) -> np.ndarray:
    """tail[r]: the relative error of the best rank-r approximation of X, for r = 0..d (uniform weights).

    From the eigenvalues of X^T X, summed in float64 a block of rows at a time."""
    d = X.shape[1]
    gram = np.zeros((d, d))
    for start in range(0, len(X), block):
        rows = np.asarray(X[start:start + block], dtype=np.float32)
        gram += (rows.T @ rows).astype(np.float64)
    eig = np.clip(np.linalg.eigvalsh(gram)[::-1], 0, None)  # descending
    total = eig.sum()
    if total <= 0:
        return np.zeros(d + 1)
    tail = np.concatenate([np.cumsum(eig[::-1])[::-1], [0.0]]) / total
    return tail


def choose(table: np.ndarray, budget_bytes: float, weights: np.ndarray | None, *, clusters=(3, 5, 8),
           block_sizes=(32, 64, 128), fit=None, sample_weight: np.ndarray | None = None, table_itemsize: int = 4,
           progress=None, verbose: bool = False, formats=None, device: str = "auto", seed: int = 0,
           tied: bool = False) -> Choice:
    """The candidate with the lowest `weights`-weighted error within budget_bytes.

    `fit(k, rank)` returns a ProjectiveClustering fitted on `table` (the compressor passes
    one configured as the user asked, with `sample_weight`, which also weights the refit
    of V to quantized U, and codebooks' k-means); `progress(text)` reports each step, and `verbose`
    shows a bar over the storages scored. `formats`: the registered format classes to try (default: every
    one; a --method of a whole-table format: only it; the factors are tried when their class is among them);
    `device` and `seed` are the codebooks' k-means'; `tied`: a tied head reads the decoded table (codebooks
    keep its leading directions as scalars). (A tied head's table is chosen for within one whole-table
    format only: the plan refuses the others.)
    """
    from projclust_onnx.storage.clustering import cluster_tail

    X = np.asarray(table, dtype=np.float32)
    n, d = X.shape
    table_bytes = n * d * table_itemsize
    say = progress or (lambda text: None)
    budget_bytes = budget_bytes * SLACK
    candidates: list[Candidate] = []
    best: list = [None, None]  # the best built candidate and its storage: only that one storage is held

    def best_error() -> float:
        return best[0].error if best[0] is not None else float("inf")

    def add(candidate: Candidate, result=None) -> None:
        if result is not None and candidate.error < best_error():
            best[:] = [candidate, result]
        candidates.append(candidate)

    # ORT's layouts want whole blocks along the row; codebooks are sized to the budget. They are scored
    # before the factors, so that a good one prunes factor candidates that cannot beat it.
    formats = tuple(registry.FORMATS if formats is None else formats)
    plain = [fmt for fmt in plain_storages(d) + sized_storages(n, d, budget_bytes, device=device, seed=seed,
                                                                verbose=verbose, tied=tied)
             if type(fmt) in formats]
    branched = next((cls for cls in formats if cls.branches), None)
    tail = spectrum_tail(X)
    with bar(verbose, "plain storages", len(plain), "storage") as tick:
        for storage in plain:
            if storage.nbytes(n, d) > budget_bytes:  # known before quantizing: skip the work
                tick(1)
                continue
            rank = getattr(storage, "rank", None)  # rows rotated onto `rank` directions: they lose at least tail[rank]
            if rank is not None and rank < d and _loses(float(tail[rank]), best_error()):
                add(Candidate(PLAIN, storage.name, storage.nbytes(n, d), float(tail[rank]), pruned=True,
                              storage=storage.label, bound="spectrum"))
                tick(1)
                continue
            if storage.sized:
                say(f"fitting {storage.label}")
            q = storage.encode(X, sample_weight)
            if q.nbytes <= budget_bytes:
                add(Candidate(PLAIN, storage.name, q.nbytes, weighted_error(X, q, weights),
                              block_size=storage.block_size, storage=storage.label), q)
            tick(1)
    # (name, block) of each storage of U; float U takes any rank (block 1)
    storages = [(s.name, s.block_size or 1) for s in factor_storages(block_sizes)]
    for k in (1, *clusters) if branched is not None else ():
        ranks = {}
        for quantize, block in storages:
            try:
                ranks[quantize, block] = rank_for_bytes(n, d, k, budget_bytes, table_itemsize, quantize, block)
            except ValueError:
                continue
        if not ranks or k > n:
            continue
        bounds = {storage: float(tail[min(k * rank, d)]) for storage, rank in ranks.items()}
        kinds = dict.fromkeys(ranks, "spectrum")
        live = {storage: rank for storage, rank in ranks.items() if not _loses(bounds[storage], best_error())}
        if not live:
            say(f"k={k} not fitted: every storage's error is at least {min(bounds.values()):.4g}, "
                f"and {best_error():.4g} is already reached")
        elif k > 1 and best[0] is not None:
            say(f"estimating k={k} at j={max(live.values())} from a sample of rows")
            estimates = sample_estimate(X, k, set(live.values()), seed=seed, device=device, verbose=verbose)
            for storage, rank in list(live.items()) if estimates else ():
                if _loses(estimates[rank] * _ESTIMATE_MARGIN, best_error()):
                    bounds[storage], kinds[storage] = estimates[rank], "sample"
                    del live[storage]
            if estimates and not live:
                say(f"k={k} not fitted: its fit on a sample of rows already leaves {min(estimates.values()):.4g} "
                    f"(optimistic), and {best_error():.4g} is already reached")
        if live:
            say(f"fitting k={k} at j={max(live.values())}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                estimator = fit(k, max(live.values()))
        with bar(verbose and bool(live), f"scoring k={k}", len(ranks), "storage") as tick:
            for (quantize, block), rank in ranks.items():
                stored = factorized_bytes(n, d, k, rank, table_itemsize, quantize, block)
                method, block_size = branched(k).method, None if get(quantize, block).bits is None else block
                if (quantize, block) not in live or _loses(bounds[quantize, block], best_error()):
                    add(Candidate(method, quantize, stored, bounds[quantize, block], k, rank, block_size, pruned=True,
                                  bound=kinds[quantize, block]))
                    tick(1)
                    continue
                f = truncated_factorization(estimator, X, rank)
                bound = cluster_tail(X, f.labels, k, rank)  # tighter: these clusters, rank each
                if _loses(bound, best_error()):
                    add(Candidate(method, quantize, stored, bound, k, rank, block_size, pruned=True, bound="clusters"))
                    tick(1)
                    continue
                if get(quantize, block).bits is not None:
                    f = f.quantized(get(quantize, block).bits, block, X, sample_weight)
                elif table_itemsize == 2:
                    f.U, f.V = f.U.astype(np.float16), f.V.astype(np.float16)
                add(Candidate(method, quantize, stored, weighted_error(X, f, weights), k, rank, block_size), f)
                tick(1)
    if not candidates:
        raise ValueError(f"nothing fits {budget_bytes:,.0f} bytes for a {n} x {d} table; ask for a smaller ratio")
    candidates.sort(key=lambda c: (c.error, c.pruned))
    logger.info("chose %s", best[0].label)
    return Choice(int(budget_bytes / SLACK), table_bytes, best[0], candidates, best[1])


def sample_estimate(X: np.ndarray, k: int, ranks, *, seed: int = 0, device: str = "auto",
                    verbose: bool = False) -> dict[int, float] | None:
    """{rank: the unweighted relative error left by k subspaces of that rank, fitted to a uniform sample of
    X's rows and measured on that sample}: an optimistic estimate of what a fit of every row reaches (the
    subspaces overfit their sample). None where a sample would be at least half the rows (no time saved)."""
    from projclust_onnx.storage.clustering import ProjectiveClustering, cluster_tails

    n, d = X.shape
    top = max(ranks)
    size = max(_ESTIMATE_ROWS, 4 * k * top)
    if 2 * size > n or top >= d:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    sample = X[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = ProjectiveClustering(k, top, sample_size=None, random_state=seed,
                                      device=device, verbose=verbose).fit(sample)
    return cluster_tails(sample, fitted.labels_, k, ranks)


def _loses(bound: float, best: float) -> bool:
    """Whether a candidate whose error is at least `bound` cannot beat `best` (a margin for the float32
    sums behind the bound)."""
    return bound * (1 - 1e-4) >= best


def truncated_factorization(estimator, X: np.ndarray, rank: int):
    """The factorization of X on the leading `rank` basis vectors of each fitted cluster,
    rows reassigned to the nearest truncated subspace."""
    from projclust_onnx.storage.factorization import EmbeddingFactorization

    return EmbeddingFactorization.from_estimator(estimator.truncate(rank), X)


def smallest_candidate_bytes(n: int, d: int, table_itemsize: int = 4, clusters=(3, 5, 8),
                             block_sizes=(32, 64, 128)) -> int:
    """Bytes of the smallest storage `choose` can build for an n x d table: the bound on the ratio it reaches."""
    sizes = [n * d] + [cls.smallest_bytes(n, d) for cls in registry.FORMATS if cls.sized] + \
        [s.nbytes(n, d) for s in plain_storages(d)]
    for k in (1, *clusters):
        for storage in factor_storages(block_sizes):
            rank = storage.rank_step()
            if k <= n and rank < d:
                sizes.append(factorized_bytes(n, d, k, rank, table_itemsize, storage.name, storage.block_size or 1))
    return min(sizes)
