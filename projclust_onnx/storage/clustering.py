"""k-subspace projective clustering: Lloyd / EM over j-dimensional linear subspaces.

Each of the k clusters owns a j-dimensional subspace through the origin; a row is
assigned to the subspace it is closest to, and each subspace is refit as the span of
the top-j eigenvectors of its rows' weighted second-moment matrix. That is the
alternating scheme of Maalouf et al. (ICLR 2021), with data-driven seeding, batched
assignment, restarts, sample weights in both steps and the robust l_z objective.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from projclust_onnx.common.device import resolve_device
from projclust_onnx.common.progress import bar as _progress
from projclust_onnx.common.threads import available_cpus, torch_threads

__all__ = ["ConvergenceWarning", "NotFittedError", "ProjectiveClustering", "check_fit_memory", "cluster_tail",
           "cluster_tails", "fit_memory_bytes"]

INIT_METHODS = ("kmeans", "random")

# Elements per block of rows in the moment sums, and of the (rows, k * columns) product in
# the assignment: a few MiB, reused, instead of table-sized temporaries allocated each step.
_ASSIGN_BLOCK_ELEMENTS = 1 << 22
_DIST_BLOCK_ELEMENTS = 1 << 21
# Seeds whose costs differ by less than this fraction are ties (often one partition, relabelled).
_TIE = 1e-6
# Rows per fitted dimension (k * rank) below which a sample overfits the subspaces: seeds are
# scored, and annealing starts, on at least this many; MiniLM's k=5, j=216 uses every row.
_ROWS_PER_DIM = 40
# max |x| within which a table is fitted as it is: sums of d squares stay far from float32's
# underflow and overflow. Outside it the fit works on a copy scaled to max |x| = 1.
_SAFE_SCALE = (2.0**-20, 2.0**20)
# Distances below this (relative to the mean squared row norm) are clamped in the l_z
# reweighting, so a row that lies on its subspace does not get an infinite weight.
_IRLS_EPS = 1e-6


class ConvergenceWarning(UserWarning):
    """The fit stopped at max_iter, or a cluster could not be kept populated."""


class NotFittedError(RuntimeError, ValueError, AttributeError):
    """Used before fit: the ValueError and AttributeError that scikit-learn's NotFittedError is, and the
    RuntimeError this estimator raised before, so existing handlers still catch it."""


@dataclass(frozen=True, eq=False)
class _Problem:
    """What every step of one fit shares: the rows X of shape (n_samples, n_features) (scaled as fitted),
    their weights and squared norms, k, j, z, and the generator behind every random draw."""

    X: torch.Tensor
    w: torch.Tensor
    norms2: torch.Tensor
    k: int
    rank: int
    z: float
    generator: torch.Generator

    def sample(self, rows: torch.Tensor | None) -> _Problem:
        """The problem on `rows` only (itself when None); weights stay usable when the sample drew only
        weightless rows."""
        if rows is None:
            return self
        rows = rows.to(self.X.device)
        ws = self.w[rows]
        return dataclasses.replace(self, X=self.X[rows], w=ws if float(ws.sum()) > 0 else torch.ones_like(ws),
                                   norms2=self.norms2[rows])


@dataclass
class _Run:
    labels: torch.Tensor
    bases: torch.Tensor
    dist2: torch.Tensor
    cost: float
    history: list[float]
    n_iter: int
    converged: bool
    subspaces: _Subspaces


class ProjectiveClustering:
    """Partition rows into k clusters, each close to its own j-dimensional subspace.

    Minimises sum_i w_i * dist(x_i, S_{c(i)})^z over the labels c and the
    subspaces S_1..S_k. With ``n_clusters=1`` this is the truncated SVD.

    Parameters
    ----------
    n_clusters : int
        k, the number of subspaces.
    rank : int
        j, the dimension of every subspace; must be < n_features.
    init : {"kmeans", "random"} or array-like of shape (n_samples,)
        Seeding. "kmeans" runs weighted spherical k-means on the row directions and
        fits a subspace to each group (rows that point the same way share a
        subspace). "random" is an equal random split, as in the paper. An array gives
        the initial labels and implies a single run.
    n_init : int
        Seeds drawn; each is scored by its cost after one Lloyd step and the lowest
        is carried through annealing and Lloyd to convergence (ignored when init is
        an array).
    anneal_steps : int
        Soft-assignment EM steps with a falling temperature between the seeding and
        the hard Lloyd iterations (0 turns it off). They move the seed out of poor
        local minima, which hard Lloyd alone cannot leave.
    sample_size : int or None
        Rows drawn at random for the spherical k-means of the seeding (None: every row).
        Seeds are scored, and annealing starts, on max(sample_size, 40 * k * rank) rows,
        fewer than which overfit the subspaces; annealing's samples grow to every row by
        its last step, and Lloyd uses every row. On a 250,000-row table this cuts the
        seeding and annealing to a fraction; MiniLM (30,522 rows) is fitted on every row:
        k-means on 8,192 of them picked worse seeds there (relative error 0.1298, not 0.1296).
    max_iter : int
        Lloyd iterations per run.
    tol : float
        A run stops when the cost falls by less than ``tol`` times its value.
    z : float in [1, 2]
        Exponent of the distance. z=2 is the sum of squared distances; z<2 is the
        robust l_z objective, fitted by iteratively reweighted refits (a
        majorise-minimise step, so the cost still never rises).
    device : "auto", "cpu", "cuda" or torch.device
        Where the work happens; "auto" takes CUDA when available.
    random_state : int or None
        Seed of the torch.Generator behind seeding; fixed => repeatable on the CPU.
    verbose : bool
        Show one progress bar per phase (seeding, annealing, Lloyd), each with its total.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    bases_ : ndarray of shape (n_clusters, n_features, rank), orthonormal columns
    cost_ : float
        sum_i w_i * dist_i^z of the kept run (for z=2, the weighted sum of squared
        distances of the rows to their assigned subspaces).
    n_iter_ : int
        Lloyd iterations of the kept run.
    cost_history_ : list of float
        Cost after the seeding and after every iteration of the kept run.
    """

    def __init__(
        self,
        n_clusters: int = 5,
        rank: int = 64,
        *,
        init: str | np.ndarray = "kmeans",
        n_init: int = 10,
        anneal_steps: int = 8,
        sample_size: int | None = 32768,
        max_iter: int = 30,
        tol: float = 1e-4,
        z: float = 2.0,
        device: str | torch.device = "auto",
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.n_clusters = n_clusters
        self.rank = rank
        self.init = init
        self.n_init = n_init
        self.anneal_steps = anneal_steps
        self.sample_size = sample_size
        self.max_iter = max_iter
        self.tol = tol
        self.z = z
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _get_param_names(cls) -> list[str]:
        """The constructor's named arguments, sorted: read from its signature, so a new argument needs no list."""
        params = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments as they stand (what sklearn.base.clone copies). `deep` is accepted for
        scikit-learn's signature; no parameter is itself an estimator, so it changes nothing."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params) -> ProjectiveClustering:
        """Set constructor arguments by name and return self; an unknown name raises ValueError before
        anything is set. Fitted attributes stay until the next fit."""
        valid = self._get_param_names()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"invalid parameter {unknown[0]!r} for {type(self).__name__}; "
                             f"valid parameters: {', '.join(valid)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ public API
    def fit(self, X, y=None, sample_weight=None) -> ProjectiveClustering:
        """Fit the k subspaces to X of shape (n_samples, n_features), rows weighted by sample_weight of
        shape (n_samples,) (None: all 1). y is ignored: it is there for scikit-learn's signature."""
        with torch_threads(min(torch.get_num_threads(), available_cpus())):
            return self._fit(X, sample_weight)

    def fit_predict(self, X, y=None, sample_weight=None) -> np.ndarray:
        """fit(X) and its labels_, of shape (n_samples,); y is ignored."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def truncate(self, rank: int) -> ProjectiveClustering:
        """A fitted copy whose subspaces keep their first `rank` basis vectors: bases_ hold each cluster's
        eigenvectors by falling eigenvalue, so these span the best rank-`rank` subspace of the same moments,
        and one fit serves every smaller rank.

        The copy's rank is `rank`; labels_, n_iter_ and n_features_in_ are the fit's (predict reassigns rows
        to the nearest truncated subspace). cost_ and cost_history_ measured the fitted rank and cannot be
        recomputed without X, so the copy has neither: score it on X with reconstruct(X).
        """
        self._check_fitted()
        fitted = self.bases_.shape[2]
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise ValueError(f"rank={rank!r} must be a positive integer")
        if rank > fitted:
            raise ValueError(f"rank={rank} must be <= the fitted rank={fitted}")
        out = copy.deepcopy(self)  # at the fitted rank, the cached subspaces stay with their bases_
        out.rank = int(rank)
        if rank < fitted:
            out.bases_ = self.bases_[:, :, :rank].copy()
            for name in ("cost_", "cost_history_", "_subspaces"):
                out.__dict__.pop(name, None)
        return out

    def _fit(self, X, sample_weight) -> ProjectiveClustering:
        device = resolve_device(self.device)
        Xt = _as_matrix(X, device)
        n, d = Xt.shape
        w, w_scale = _as_weights(sample_weight, n, device, Xt.dtype)
        init_labels = self._check_params(n, d)
        # Subspaces do not change with scale, but the squared distances of a 1e-30 or 1e25 table
        # would underflow or overflow float32: such a table is fitted on a copy scaled to max |x| = 1.
        Xt, x_scale = _unit_scaled(Xt)

        k = self.n_clusters
        problem = _Problem(Xt, w, (Xt * Xt).sum(dim=1), k, self.rank, self.z, _generator(self.random_state))
        labels0 = init_labels.to(device) if init_labels is not None else None
        if k > 1 and (labels0 is None or self.anneal_steps):
            labels0 = self._start(problem, labels0)
        elif labels0 is None:  # one subspace: the truncated SVD needs no seed
            labels0 = torch.zeros(n, dtype=torch.int64, device=device)
        with _progress(self.verbose, "Lloyd (stops when settled)", 1 if k == 1 else self.max_iter) as bar:
            best = _lloyd(problem, labels0, self.max_iter, self.tol, bar)
        if not best.converged:
            warnings.warn(
                f"max_iter={self.max_iter} reached before the cost settled "
                f"(tol={self.tol}); raise max_iter for a tighter fit.",
                ConvergenceWarning, stacklevel=3)

        self.labels_ = best.labels.cpu().numpy().astype(np.int64)
        self.bases_ = best.bases.cpu().numpy()
        self._subspaces = (self.bases_, best.subspaces)  # what predict reuses while bases_ stays
        cost_scale = x_scale ** float(self.z) * w_scale
        self.cost_ = float(best.cost) * cost_scale
        self.cost_history_ = [c * cost_scale for c in best.history]
        self.n_iter_ = best.n_iter
        self.n_features_in_ = d
        self.device_ = str(device)
        return self

    def predict(self, X) -> np.ndarray:
        """Index of the nearest subspace for each row of X, of shape (n_samples,)."""
        _, labels, _ = self._prepare(X)
        return labels.cpu().numpy().astype(np.int64)

    def transform(self, X) -> np.ndarray:
        """Coefficients of each row in its own cluster's basis, of shape (n_samples, rank)."""
        Xt, labels, bases = self._prepare(X)
        return _coefficients(Xt, labels, bases).cpu().numpy()

    def reconstruct(self, X) -> np.ndarray:
        """Projection of each row onto its nearest subspace, of shape (n_samples, n_features)."""
        Xt, labels, bases = self._prepare(X)
        coef = _coefficients(Xt, labels, bases)
        out = torch.empty_like(Xt)
        for c in range(bases.shape[0]):
            members = labels == c
            out[members] = coef[members] @ bases[c].T
        return out.cpu().numpy()

    def predict_transform(self, X) -> tuple[np.ndarray, np.ndarray]:
        """predict(X) and transform(X) from one assignment."""
        Xt, labels, bases = self._prepare(X)
        return labels.cpu().numpy().astype(np.int64), _coefficients(Xt, labels, bases).cpu().numpy()

    # ------------------------------------------------------------------ helpers
    def _start(self, problem: _Problem, labels: torch.Tensor | None) -> torch.Tensor:
        """Labels for Lloyd from seeding (unless given) and annealing, each on a sample of rows.

        Spherical k-means sees `sample_size` rows (k directions need few); seeds are scored,
        and annealing starts, on _ROWS_PER_DIM rows per fitted dimension (fewer overfit a
        rank-j subspace), and annealing's samples grow to every row at its last step.
        """
        n = problem.X.shape[0]
        size = self.sample_size or n
        fit_size = max(size, _ROWS_PER_DIM * problem.k * problem.rank)
        perm = torch.randperm(n, generator=problem.generator) if n > size else None
        fit = problem.sample(_prefix(perm, fit_size))
        if labels is None:
            seeds = problem.sample(_prefix(perm, size))
            sphere = _Sphere.of(seeds.X, seeds.w) if self.init == "kmeans" else None
            with _progress(self.verbose, "seeding", self.n_init) as bar:
                labels = self._best_seed(fit, sphere, bar)
        elif perm is not None and n > fit_size:
            labels = labels[_prefix(perm, fit_size).to(labels.device)]
        if fit is problem and not self.anneal_steps:
            return labels
        subspaces = _refit(fit, labels)
        if self.anneal_steps:
            sizes = _growing(min(fit_size, n), n, self.anneal_steps)
            with _progress(self.verbose, "annealing", self.anneal_steps) as bar:
                subspaces = _anneal(problem, subspaces, [_prefix(perm, m) for m in sizes], bar)
        return _assign(problem.X, problem.norms2, subspaces)[0]

    def _best_seed(self, problem: _Problem, sphere: _Sphere | None, progress) -> torch.Tensor:
        """Draw n_init seeds and keep the one whose first refit costs least.

        On MiniLM that one-step cost ranks seeds as their converged cost does, at a
        tenth of the price, so the budget goes to refining one good seed. For z = 2 it is
        the energy the refit subspaces leave on the seed's own rows, from the moments'
        eigenvalues alone (no assignment pass); for z < 2, the cost after reassignment.
        """
        X, w, rank = problem.X, problem.w, problem.rank
        best_labels, best_cost = None, float("inf")
        energy = float((w.double() * problem.norms2.double()).sum())
        for _ in range(self.n_init):
            labels = _seed_labels(problem, self.init, sphere)
            moments = _moments(X, w, labels, problem.k)
            if problem.z == 2.0:
                cost = energy - float(_eigh(moments, values_only=True)[:, -rank:].sum())
            else:
                cost = _cost(w, _assign(X, problem.norms2, _decompose(moments, rank, X.dtype))[1], problem.z)
            if cost < best_cost * (1 - _TIE):  # a near tie keeps the earlier seed, whatever the rounding
                best_labels, best_cost = labels, cost
            progress(1)
        return best_labels

    def _check_params(self, n: int, d: int) -> torch.Tensor | None:
        k, j = self.n_clusters, self.rank
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_clusters={k!r} must be a positive integer")
        if k > n:
            raise ValueError(f"n_clusters={k} must be <= n_samples={n}")
        if not isinstance(j, (int, np.integer)) or j < 1:
            raise ValueError(f"rank={j!r} must be a positive integer")
        if j >= d:
            raise ValueError(f"rank={j} must be < n_features={d}; at rank >= d nothing is compressed")
        if not 1.0 <= float(self.z) <= 2.0:
            raise ValueError(f"z={self.z} must lie in [1, 2]")
        if self.max_iter < 1:
            raise ValueError(f"max_iter={self.max_iter} must be >= 1")
        if self.sample_size is not None and (not isinstance(self.sample_size, (int, np.integer))
                                             or self.sample_size < 1):
            raise ValueError(f"sample_size={self.sample_size!r} must be a positive integer or None")
        if self.anneal_steps < 0:
            raise ValueError(f"anneal_steps={self.anneal_steps} must be >= 0")
        if self.n_init < 1:
            raise ValueError(f"n_init={self.n_init} must be >= 1")
        if self.tol < 0:
            raise ValueError(f"tol={self.tol} must be >= 0")
        if isinstance(self.init, str):
            if self.init not in INIT_METHODS:
                raise ValueError(f"init={self.init!r} must be one of {INIT_METHODS} or an array of labels")
            return None
        labels = torch.as_tensor(np.asarray(self.init), dtype=torch.int64)
        if labels.shape != (n,):
            raise ValueError(f"init labels of shape {tuple(labels.shape)} must have shape ({n},)")
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"init labels must lie in [0, n_clusters={k})")
        return labels

    def _check_fitted(self) -> None:
        if not hasattr(self, "bases_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")

    def _prepare(self, X):
        self._check_fitted()
        device = resolve_device(self.device)
        Xt = _as_matrix(X, device)
        if Xt.shape[1] != self.n_features_in_:
            raise ValueError(f"X has n_features={Xt.shape[1]}, the fit saw {self.n_features_in_}")
        bases = torch.as_tensor(self.bases_, device=device, dtype=Xt.dtype)
        cached = getattr(self, "_subspaces", None)
        if cached is None or cached[0] is not self.bases_ or cached[1].vectors.device != device \
                or cached[1].vectors.dtype != Xt.dtype:
            self._subspaces = (self.bases_, _as_subspaces(bases))
        if bases.shape[0] == 1:  # one subspace: every row is its
            return Xt, torch.zeros(len(Xt), dtype=torch.int64, device=device), bases
        labels, _ = _assign(Xt, None, self._subspaces[1], _scale_of(Xt))
        return Xt, labels, bases


def cluster_tail(X, labels, n_clusters: int, rank: int) -> float:
    """The energy of X's rows beyond their own cluster's best rank-`rank` subspace, relative to ||X||_F^2.

    By Eckart-Young per cluster, no factorization with these labels and `rank` columns of U
    (float or quantized, V refit or not) has a lower unweighted relative error: the chooser's
    bound before it builds a candidate.
    """
    return cluster_tails(X, labels, n_clusters, [rank])[rank]


def cluster_tails(X, labels, n_clusters: int, ranks) -> dict[int, float]:
    """cluster_tail at each of `ranks`, from one set of moments and eigenvalues."""
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float32))
    moments = _moments(Xt, None, torch.as_tensor(np.asarray(labels, dtype=np.int64)), n_clusters)
    eig = _eigh(moments, values_only=True).clamp_min(0)
    total = float(eig.sum())
    d = Xt.shape[1]
    return {int(r): float(eig[:, :max(d - int(r), 0)].sum()) / total if total > 0 else 0.0 for r in ranks}


# ---------------------------------------------------------------------- memory
def fit_memory_bytes(n: int, d: int, n_clusters: int, rank: int, itemsize: int = 4) -> int:
    """Bytes a fit of an (n, d) table needs beside the table itself, and the factors it yields.

    The scaled float working copy (float64 stays float64), per-row norms, weights, labels and
    distances, the (n, k) distances and responsibilities, the blocks of rows and products
    (a few MiB, reused), k moments and eigenvectors, and U of shape (n, rank).
    """
    work = 8 if itemsize == 8 else 4
    per_row = 3 * work + 3 * 8 + 2 * n_clusters * work
    blocks = 4 * _ASSIGN_BLOCK_ELEMENTS * work
    moments = 4 * n_clusters * d * d * 8
    return n * d * work + n * per_row + blocks + moments + n * rank * work


def memory_headrooms() -> dict[str, int]:
    """Bytes this process may still allocate, by what limits it: the machine's MemAvailable, the address-space
    limit (ulimit -v) less what is mapped now, and the cgroup's memory.max less its memory.current (a
    container's limit). Unknown limits are left out."""
    found = {}
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found["available memory"] = int(line.split()[1]) * 1024
    with contextlib.suppress(ImportError, OSError, ValueError, IndexError):
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            mapped = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                          if line.startswith("VmSize:"))
            found["the address-space limit (ulimit -v)"] = max(0, limit - mapped)
    with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
        entry = Path("/proc/self/cgroup").read_text().splitlines()[0].split(":", 2)[2]  # cgroup v2: "0::/path"
        group = Path("/sys/fs/cgroup") / entry.lstrip("/")
        maximum = (group / "memory.max").read_text().strip()
        if maximum != "max":
            found["the cgroup's memory limit"] = max(0, int(maximum) - int((group / "memory.current").read_text()))
    return found


def available_memory() -> int | None:
    """Bytes this process may still allocate: the tightest of memory_headrooms(), None where none is known."""
    found = memory_headrooms()
    return min(found.values()) if found else None


def memory_limit() -> str:
    """What limits available_memory() (for a message)."""
    found = memory_headrooms()
    return min(found, key=found.get) if found else "unknown"


def check_fit_memory(n: int, d: int, n_clusters: int, rank: int, itemsize: int = 4,
                     available: int | None = None) -> None:
    """ValueError, in one line, when fit_memory_bytes exceeds the memory available now."""
    available = available_memory() if available is None else available
    need = fit_memory_bytes(n, d, n_clusters, rank, itemsize)
    if available is not None and need > available:
        raise ValueError(f"fitting the {n} x {d} table at n_clusters={n_clusters}, rank={rank} needs about "
                         f"{need / 2**30:.1f} GiB but {available / 2**30:.1f} GiB is left ({memory_limit()}); free "
                         "memory, raise the limit, lower rank or n_clusters, or run on a larger machine")


# ---------------------------------------------------------------------- validation
def _as_matrix(X, device: torch.device) -> torch.Tensor:
    """X as a 2-D float tensor on device: float64 stays float64, everything else float32."""
    t = X.detach() if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
    if t.ndim != 2:
        raise ValueError(f"X of shape {tuple(t.shape)} must be 2-D (n_samples, n_features); "
                         "reshape a single row with X.reshape(1, -1)")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"X of dtype {t.dtype} must be numeric")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    t = t.to(device=device, dtype=dtype)
    step = max(1, _ASSIGN_BLOCK_ELEMENTS // max(t.shape[1], 1))
    bad = torch.cat([~torch.isfinite(t[start:start + step]).all(dim=1) for start in range(0, len(t), step)]
                    or [torch.zeros(0, dtype=torch.bool, device=device)])
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:5].tolist()
        raise ValueError(f"X has {int(bad.sum())} rows with NaN or inf (first: {rows}); "
                         "clean or drop them before fitting")
    return t.contiguous()


def _as_weights(sample_weight, n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """Weights scaled to max 1 (only ratios matter; 1e-300 or 1e300 stay representable) and that scale."""
    if sample_weight is None:
        return torch.ones(n, device=device, dtype=dtype), 1.0
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"sample_weight of shape {w.shape} must have shape ({n},)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and >= 0; negative weights have no meaning here")
    if not (w > 0).any():
        raise ValueError("sample_weight is 0 everywhere; at least one row needs a positive weight")
    top = float(w.max())
    return torch.as_tensor(w / top).to(device=device, dtype=dtype), top


def _scale_of(X: torch.Tensor) -> float:
    """max |X| (found without an |X|-sized temporary) when X must be scaled down or up to be
    fitted in float32, else 1."""
    if not X.numel():
        return 1.0
    lo, hi = torch.aminmax(X)
    scale = max(-float(lo), float(hi))
    return 1.0 if scale == 0.0 or _SAFE_SCALE[0] <= scale <= _SAFE_SCALE[1] else scale


def _unit_scaled(X: torch.Tensor) -> tuple[torch.Tensor, float]:
    """X / max|X| and that scale, or X itself and 1 where its squares already sit well inside
    float32's range: then no table-sized copy is made."""
    scale = _scale_of(X)
    return (X, 1.0) if scale == 1.0 else (X / scale, scale)


# ---------------------------------------------------------------------- seeding
def _prefix(perm: torch.Tensor | None, size: int | None) -> torch.Tensor | None:
    """The first `size` rows of a random permutation, sorted (None: every row)."""
    if perm is None or size is None or size >= len(perm):
        return None
    return perm[:size].sort().values


def _growing(first: int, n: int, steps: int) -> list[int]:
    """Sample sizes growing geometrically from `first` to n over `steps` steps; a sample of more than
    half the rows is all of them (gathering it would cost more memory than its time saves)."""
    if steps == 1:
        return [n]
    sizes = [round(first * (n / first) ** (i / (steps - 1))) for i in range(steps)]
    return [n if 2 * m > n else m for m in sizes]


def _generator(random_state: int | None) -> torch.Generator:
    """A CPU generator seeded with random_state (fresh entropy when None): the fit's only source of randomness."""
    generator = torch.Generator(device="cpu")
    if random_state is not None:
        generator.manual_seed(int(random_state))
    else:
        generator.seed()
    return generator


def _seed_labels(problem: _Problem, init: str, sphere: _Sphere | None = None) -> torch.Tensor:
    """Initial labels of the problem's rows: an equal random split, or the nearest spherical k-means centre."""
    X, k = problem.X, problem.k
    n = X.shape[0]
    if k == 1:
        return torch.zeros(n, dtype=torch.int64, device=X.device)
    if init == "random":
        perm = torch.randperm(n, generator=problem.generator).to(X.device)
        labels = torch.empty(n, dtype=torch.int64, device=X.device)
        labels[perm] = torch.arange(n, device=X.device) % k
        return labels
    # argmax of x . c is the nearest centre by cosine: a row's norm does not change it.
    return (X @ _spherical_kmeans(sphere, k, problem.generator).T).argmax(dim=1)


@dataclass
class _Sphere:
    """Row directions and their masses w_i * ||x_i||^2, computed once for every seed."""

    directions: torch.Tensor
    mass: torch.Tensor
    weighted: torch.Tensor  # directions * mass, what a centre sums
    probs: torch.Tensor  # mass / sum(mass) on the CPU, for sampling

    @classmethod
    def of(cls, X: torch.Tensor, w: torch.Tensor) -> _Sphere:
        norms2 = (X * X).sum(dim=1)
        directions = X / norms2.sqrt().clamp_min(1e-12)[:, None]
        mass = w * norms2
        if float(mass.sum()) <= 0:  # the weighted rows are all zero: any direction fits them
            mass = w
        return cls(directions, mass, directions * mass[:, None], (mass / mass.sum()).cpu().double())


def _spherical_kmeans(sphere: _Sphere, k: int, generator: torch.Generator, n_iter: int = 10) -> torch.Tensor:
    """Centres of shape (k, d) from weighted spherical k-means on the row directions.

    A row's weight is w_i * ||x_i||^2, its share of the energy a subspace must
    capture; centres are seeded by k-means++ on the cosine distance.
    """
    directions, mass, probs = sphere.directions, sphere.mass, sphere.probs
    first = int(torch.multinomial(probs, 1, generator=generator))
    centres = directions[first:first + 1]
    closest = 1.0 - directions @ centres[0]
    for _ in range(1, k):
        p = (mass * closest.clamp_min(0)).cpu().double()
        p = probs if float(p.sum()) <= 0 else p / p.sum()
        nxt = int(torch.multinomial(p, 1, generator=generator))
        centres = torch.cat([centres, directions[nxt:nxt + 1]])
        closest = torch.minimum(closest, 1.0 - directions @ directions[nxt])
    for _ in range(n_iter - 1):  # the centres that gave the last labels are returned, not their update
        labels = (directions @ centres.T).argmax(dim=1)
        # One (k, m) x (m, d) product; index_add_ scatters row by row, ten times slower here.
        sums = torch.nn.functional.one_hot(labels, k).T.to(directions.dtype) @ sphere.weighted
        norms = sums.norm(dim=1, keepdim=True)
        keep = norms[:, 0] > 0
        centres = torch.where(keep[:, None], sums / norms.clamp_min(1e-12), centres)
    return centres


# ---------------------------------------------------------------------- subspaces
@dataclass
class _Subspaces:
    """Each cluster's eigenvectors, ascending, of shape (k, d, d); the bases are the top `rank`.

    Distances use whichever side is narrower: ||x||^2 - ||B^T x||^2 with the basis B, or
    ||C^T x||^2 with its orthogonal complement C (d - rank columns, free from the same
    eigendecomposition, and exact where the first form cancels).
    """

    vectors: torch.Tensor
    rank: int

    @property
    def bases(self) -> torch.Tensor:
        return self.vectors[..., -self.rank:].flip(-1).contiguous()

    def projector(self) -> tuple[torch.Tensor, bool]:
        """(columns stacked as (d, k * width), whether they span the complement)."""
        d = self.vectors.shape[1]
        complement = d - self.rank < self.rank
        cols = self.vectors[..., :d - self.rank] if complement else self.vectors[..., -self.rank:]
        return cols.permute(1, 0, 2).reshape(d, -1).contiguous(), complement


def _as_subspaces(bases: torch.Tensor) -> _Subspaces:
    """Wrap given bases (k, d, j); the complement is built only where it is narrower."""
    k, d, j = bases.shape
    if d - j >= j:
        return _Subspaces(bases.flip(-1), j)  # only the top j columns are read
    eye = torch.eye(d, dtype=torch.float64, device=bases.device)
    b = bases.double()
    _, vecs = _eigh(eye - b @ b.transpose(1, 2))  # the complement: eigenvalue 1, the basis: 0
    return _Subspaces(torch.cat([vecs[..., -(d - j):], b.flip(-1)], dim=-1).to(bases.dtype), j)


def _eigh(moments: torch.Tensor, values_only: bool = False):
    """torch.linalg.eigh (or eigvalsh), ascending eigenvalues; on the CPU on one thread: small and
    latency-bound, extra threads only wait on each other."""
    decompose = torch.linalg.eigvalsh if values_only else torch.linalg.eigh
    with torch_threads(1) if moments.device.type == "cpu" else contextlib.nullcontext():
        return decompose(moments)


def _decompose(moments: torch.Tensor, rank: int, dtype: torch.dtype) -> _Subspaces:
    """Moments (float64) decomposed in float64, so float32 data still gets accurate, orthonormal bases."""
    _, vecs = _eigh(moments)
    return _Subspaces(vecs.to(dtype), rank)


def _moments(X: torch.Tensor, w: torch.Tensor | None, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Each cluster's weighted second moment sum_i w_i x_i x_i^T, of shape (k, d, d), in float64.

    Rows go through in blocks sorted by label, so temporaries stay a block in size and each
    cluster is one contiguous product per block.
    """
    n, d = X.shape
    out = torch.zeros(k, d, d, dtype=torch.float64, device=X.device)
    block = max(1, _ASSIGN_BLOCK_ELEMENTS // d)
    for start in range(0, n, block):
        lb = labels[start:start + block]
        order = torch.argsort(lb)
        Xb = X[start:start + block][order]
        if w is not None:
            Xb.mul_(w[start:start + block][order].sqrt()[:, None])
        counts = torch.bincount(lb, minlength=k).tolist()
        first = 0
        for c, count in enumerate(counts):
            if count:
                rows = Xb[first:first + count]
                out[c] += (rows.T @ rows).double()
            first += count
    return out


def _refit(problem: _Problem, labels: torch.Tensor) -> _Subspaces:
    """Top-`rank` eigenvectors of each cluster's weighted second moment."""
    return _decompose(_moments(problem.X, problem.w, labels, problem.k), problem.rank, problem.X.dtype)


def _soft_refit(problem: _Problem, resp: torch.Tensor) -> _Subspaces:
    """As _refit, with responsibilities of shape (n, k); rows with a responsibility
    under 1e-3 are left out, which keeps annealing cheap once it sharpens. A block of
    rows at a time, so the gathered rows never grow to a cluster of the whole table."""
    X, w = problem.X, problem.w
    (n, d), k = X.shape, resp.shape[1]
    moments = torch.zeros(k, d, d, dtype=torch.float64, device=X.device)
    block = max(1, _ASSIGN_BLOCK_ELEMENTS // d)
    for start in range(0, n, block):
        Xb, wb, rb = X[start:start + block], w[start:start + block], resp[start:start + block]
        for c in range(k):
            rows = torch.nonzero(rb[:, c] > 1e-3).flatten()
            if len(rows):
                Xc = Xb[rows].mul_((wb[rows] * rb[rows, c]).sqrt()[:, None])
                moments[c] += (Xc.T @ Xc).double()
    return _decompose(moments, problem.rank, X.dtype)


def _anneal(problem: _Problem, subspaces: _Subspaces, samples, progress, start: float = 0.3,
            end: float = 0.03) -> _Subspaces:
    """Soft EM with a falling temperature, one step on each sample of rows (None: all rows);
    returns the subspaces it settles on.

    Hard Lloyd moves a row only when another subspace already fits it better; soft
    responsibilities let subspaces drift towards rows they would win after moving,
    which escapes the seed's local minimum (about 1.5% lower cost on MiniLM).
    The temperature runs geometrically from `start` to `end` times the mean distance.
    The early, hot steps only need the rough shape of the data, so they can run on
    a sample; the last one runs on every row.
    """
    steps = len(samples)
    scale = None
    for step, rows in enumerate(samples):
        sample = problem.sample(rows)
        dist2 = _distances(sample.X, sample.norms2, subspaces)
        if scale is None:
            scale = float((sample.w * dist2.min(dim=1).values).sum() / sample.w.sum())
            if scale <= 0:
                return subspaces
        temperature = scale * start * (end / start) ** (step / max(steps - 1, 1))
        resp = torch.softmax(dist2.div_(-temperature), dim=1)
        subspaces = _soft_refit(sample, resp)
        progress(1)
    return subspaces


def _distances(X: torch.Tensor, norms2: torch.Tensor | None, subspaces: _Subspaces, scale: float = 1.0) -> torch.Tensor:
    """Squared distance of every row of X / scale to every subspace, of shape (n, k).

    One product against all k projectors per block of rows, into one reused buffer;
    the rows' squared norms are computed per block when `norms2` is None.
    """
    n = X.shape[0]
    k = subspaces.vectors.shape[0]
    stacked, complement = subspaces.projector()
    width = stacked.shape[1] // k
    block = max(1, min(n, _DIST_BLOCK_ELEMENTS // max(k * width, X.shape[1], 1)))
    buffer = torch.empty(block, k * width, dtype=X.dtype, device=X.device)
    out = torch.empty(n, k, dtype=X.dtype, device=X.device)
    for start in range(0, n, block):
        Xb = X[start:start + block]
        if scale != 1.0:
            Xb = Xb / scale
        prod = torch.matmul(Xb, stacked, out=buffer[:Xb.shape[0]])
        captured = prod.square_().view(-1, k, width).sum(dim=2)
        if complement:
            out[start:start + block] = captured
        else:
            nb = (Xb * Xb).sum(dim=1) if norms2 is None else norms2[start:start + block]
            out[start:start + block] = (nb[:, None] - captured).clamp_min_(0)
    return out


def _assign(X: torch.Tensor, norms2: torch.Tensor | None, subspaces: _Subspaces,
            scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest subspace and the squared distance to it, for every row."""
    dist2, labels = _distances(X, norms2, subspaces, scale).min(dim=1)
    return labels, dist2


def _coefficients(X: torch.Tensor, labels: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """Each row's coordinates in its cluster's basis, of shape (n, j)."""
    coef = torch.empty(X.shape[0], bases.shape[2], dtype=X.dtype, device=X.device)
    block = max(1, _ASSIGN_BLOCK_ELEMENTS // X.shape[1])
    for start in range(0, X.shape[0], block):  # gathers a block at a time, not a cluster of the whole table
        Xb, lb = X[start:start + block], labels[start:start + block]
        for c in range(bases.shape[0]):
            members = torch.nonzero(lb == c).flatten()
            if len(members):
                coef[start + members] = Xb[members] @ bases[c]
    return coef


def _cost(w: torch.Tensor, dist2: torch.Tensor, z: float) -> float:
    d = dist2.double()
    return float((w.double() * (d if z == 2.0 else d.pow(z / 2.0))).sum())


def _reseed_small(labels: torch.Tensor, dist2: torch.Tensor, k: int, rank: int) -> bool:
    """Give every cluster with fewer than `rank` rows the worst-fit rows of the others.

    Exactly `rank` rows move, so the new subspace can pass through all of them: their
    distance drops to zero and the cost cannot rise. Returns False when there are
    too few rows to go round.
    """
    counts = torch.bincount(labels, minlength=k)
    small = torch.nonzero(counts < rank).flatten().tolist()
    if not small:
        return True
    order = torch.argsort(dist2, descending=True)
    taken = torch.zeros_like(labels, dtype=torch.bool)
    for c in small:
        need = rank - int(counts[c])
        for idx in order.tolist():
            if need == 0:
                break
            donor = int(labels[idx])
            if taken[idx] or donor == c or counts[donor] <= rank:
                continue
            labels[idx] = c
            taken[idx] = True
            counts[donor] -= 1
            counts[c] += 1
            dist2[idx] = 0
            need -= 1
        if need:
            return False
    return True


class _Moments:
    """The clusters' second moments for the current labels, updated by the rows that moved.

    After the first Lloyd steps few rows change cluster, so moving their outer products
    costs a fraction of recomputing every moment (z = 2, where the weights stay fixed).
    """

    def __init__(self, X: torch.Tensor, k: int) -> None:
        self.X, self.k = X, k
        self.labels: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.moments: torch.Tensor | None = None

    def update(self, w: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        moved = None
        if self.labels is not None and self.weights is w:
            moved = torch.nonzero(labels != self.labels).flatten()
        if moved is None or len(moved) > len(labels) // 4:
            self.moments = _moments(self.X, w, labels, self.k)
        elif len(moved):
            Xm = self.X[moved]
            Xm.mul_(w[moved].sqrt()[:, None])
            self.moments -= _moments(Xm, None, self.labels[moved], self.k)
            self.moments += _moments(Xm, None, labels[moved], self.k)
        self.labels, self.weights = labels.clone(), w
        return self.moments


def _lloyd(problem: _Problem, labels: torch.Tensor, max_iter: int, tol: float, progress) -> _Run:
    """Hard Lloyd from `labels` until the cost falls by less than tol times itself, or max_iter steps."""
    X, w, norms2, k, rank, z = problem.X, problem.w, problem.norms2, problem.k, problem.rank, problem.z
    scale = float((w * norms2).sum() / w.sum())
    labels = labels.clone()
    fit_w = w
    moments = _Moments(X, k)
    subspaces = _decompose(moments.update(fit_w, labels), rank, X.dtype)
    labels, dist2 = _assign(X, norms2, subspaces)
    cost = _cost(w, dist2, z)
    history = [cost]
    if k == 1 and z == 2.0:  # one subspace, fixed weights: nothing can move, the SVD is final
        progress(1)
        return _Run(labels, subspaces.bases, dist2, cost, history, 1, True, subspaces)
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        if not _reseed_small(labels, dist2, k, rank):
            warnings.warn(
                f"could not keep {k} clusters of at least rank={rank} rows each; "
                "lower n_clusters or rank", ConvergenceWarning, stacklevel=4)
        if z != 2.0:
            fit_w = w * dist2.clamp_min(_IRLS_EPS * (scale or 1.0)).pow(z / 2.0 - 1.0)
        subspaces = _decompose(moments.update(fit_w, labels), rank, X.dtype)
        labels, dist2 = _assign(X, norms2, subspaces)
        previous, cost = cost, _cost(w, dist2, z)
        history.append(cost)
        progress(1, cost=f"{cost:.5g}")
        if previous - cost <= tol * abs(previous):
            converged = True
            break
    return _Run(labels, subspaces.bases, dist2, cost, history, n_iter, converged, subspaces)
