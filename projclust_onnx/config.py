"""ProjClustConfig: every choice of one compression, saved beside the model it produced."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from projclust_onnx.budget import QUANTIZE, factorized_bytes, rank_for_budget, rank_for_bytes
from projclust_onnx.errors import SettingError

CONFIG_NAME = "projclust_config.json"
METHODS = ("projclust", "svd")
DEFAULT_CLUSTERS = 5
HEAD_CHOICES = ("factorize", "keep")
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed and numpy accept alike
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class ProjClustConfig:
    """How to compress a word embedding.

    Attributes:
        method: "projclust" (k subspaces) or "svd" (one subspace: k = 1).
        n_clusters: k; None means 5 for projclust and 1 for svd.
        compression: fraction of the table's bytes, as stored, to remove (0.4 = 40% smaller; for a
            table ONNX Runtime stored in int8, 40% fewer bytes than that int8 table), converted to
            the largest rank that fits (see budget.rank_for_budget).
        rank: j, given directly instead of compression.
        quantize: how U is stored: "none" (the table's float type), "int8" or "int4" (blocks along
            j with float16 scales and zero points; V in float16). None: as the input table is stored
            (none for a float table, int8/int4 for a table ONNX Runtime's quantizers stored so).
        block_size: values per quantization block (a power of two >= 16); quantized ranks are
            multiples of it. The chooser (target_ratio) tries 32, 64 and 128 itself.
        lookup_form: how quantized storage is read: "contrib" (com.microsoft.GatherBlockQuantized)
            or "standard" (opset-13 operators only, for runtimes without contrib ops).
        target_ratio: pick the method, k, j and bits (plain quantization, SVD, projective
            clustering) that minimise the weighted reconstruction error within the float table's
            bytes / target_ratio; method, n_clusters, compression, rank and quantize are then chosen.
        head: what to do with a tied LM head (the table read by MatMul or Gemm, directly, through
            Transpose, or as its own transposed copy, which is how Optimum exports a tied model
            without accelerate): "factorize" (default) rewrites it with the same factors, so the
            model stays tied and the head costs n*j + k*j*d multiply-adds per position instead of
            n*d; quantized U is read by MatMulNBits, and target_ratio is refused. "keep" leaves it
            dense and compresses the lookup only: the model is then untied, and the report says so.
        layout: runtime subgraph, "grouped" or "onehot" (see passes.factorize_embedding).
        init, n_init, anneal_steps, max_iter, tol, z: ProjectiveClustering settings.
        seed: random_state of the clustering and of the parity check's inputs.
        device: where the clustering runs: "auto", "cpu" or "cuda".
        ids_input: name of the token-id graph input.
        calibration_text: text files whose token frequencies weight the rows.
        calibration_dataset: a datasets name "NAME[:CONFIG][@SPLIT]" or CSV/JSON file for the same.
        calibration_column: the text column of calibration_dataset.
        calibration_smoothing: pseudo-count added to every token's frequency, so that
            tokens unseen in calibration still count: weight = count + smoothing.
        special_token_weight: each of the tokenizer's special tokens ([CLS], [SEP], ...)
            weighs this many times the rest of the table together, so the rows that
            occur in every input are fit (nearly) exactly; 0 weighs them like any row.
    """

    method: str = "projclust"
    n_clusters: int | None = None
    compression: float | None = 0.4
    rank: int | None = None
    quantize: str | None = None
    block_size: int = 32
    lookup_form: str = "contrib"
    target_ratio: float | None = None
    head: str = "factorize"
    layout: str = "grouped"
    init: str = "kmeans"
    n_init: int = 10
    anneal_steps: int = 8
    max_iter: int = 30
    tol: float = 1e-4
    z: float = 2.0
    seed: int = 0
    device: str = "auto"
    ids_input: str = "input_ids"
    calibration_text: list[str] = field(default_factory=list)
    calibration_dataset: str | None = None
    calibration_column: str = "text"
    calibration_smoothing: float = 1.0
    special_token_weight: float = 30.0

    def __post_init__(self) -> None:
        from projclust_onnx.clustering import INIT_METHODS
        from projclust_onnx.passes.builder import LOOKUP_FORMS
        from projclust_onnx.passes.factorize_embedding import LAYOUTS

        _choice("method", self.method, METHODS)
        if self.n_clusters is None:
            self.n_clusters = 1 if self.method == "svd" else DEFAULT_CLUSTERS
        _whole("n_clusters", self.n_clusters, 1)
        if self.quantize is not None:
            _choice("quantize", self.quantize, QUANTIZE)
        _whole("block_size", self.block_size, 16)
        if self.block_size & (self.block_size - 1):
            raise SettingError("block_size", f"{{}}={self.block_size} must be a power of two >= 16 "
                               "(ONNX Runtime's GatherBlockQuantized)")
        _choice("lookup_form", self.lookup_form, LOOKUP_FORMS)
        if self.target_ratio is not None:
            _number("target_ratio", self.target_ratio)
            if self.target_ratio <= 1:
                raise SettingError("target_ratio", f"{{}}={self.target_ratio} must be > 1, e.g. 10 for a table "
                                   "ten times smaller")
            if self.rank is not None:
                raise SettingError("target_ratio", "give {} or rank, not both: the chooser picks the rank")
            self.compression = None
        if self.method == "svd" and self.n_clusters != 1:
            raise SettingError("n_clusters", f"{{}}={self.n_clusters} must be 1 with method svd, the one-cluster "
                               "case; use method projclust for k > 1")
        if self.rank is not None:
            self.compression = None
            _whole("rank", self.rank, 1)
        elif self.target_ratio is not None:
            pass
        elif self.compression is None:
            raise SettingError("compression", "give {} (e.g. 0.4) or rank")
        else:
            _number("compression", self.compression)
            if not 0.0 < self.compression < 1.0:
                raise SettingError("compression", f"{{}}={self.compression} must lie in (0, 1), e.g. 0.4 for a 40% "
                                   "smaller table")
        _choice("layout", self.layout, LAYOUTS)
        if self.head is None:  # configs saved before the head pass existed
            self.head = "factorize"
        _choice("head", self.head, HEAD_CHOICES)
        _choice("init", self.init, INIT_METHODS)
        _whole("n_init", self.n_init, 1)
        _whole("anneal_steps", self.anneal_steps, 0)
        _whole("max_iter", self.max_iter, 1)
        _whole("seed", self.seed, 0, MAX_SEED)
        for name in ("tol", "special_token_weight", "calibration_smoothing"):
            _number(name, getattr(self, name), minimum=0.0)
        _number("z", self.z)
        if not 1.0 <= self.z <= 2.0:
            raise SettingError("z", f"{{}}={self.z} must lie in [1, 2] (2: squared distances; 1: robust)")
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise SettingError("device", f"{{}}={self.device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if isinstance(self.calibration_text, (str, Path)):
            self.calibration_text = [self.calibration_text]  # one file, not a list of its characters
        self.calibration_text = [str(p) for p in self.calibration_text]

    def rank_for(self, n_rows: int, dim: int, param_bytes: int = 4, quantize: str | None = None,
                 stored_bytes: int | None = None, extra_bytes: int = 0) -> int:
        """The rank j this config gives a table of n_rows x dim whose values are param_bytes wide
        (the float type the model computes in) and which is stored in stored_bytes (default:
        as floats; less for a table ONNX Runtime already quantized). `extra_bytes` must fit in
        the budget besides U, V and the cluster ids (the index maps of a rewritten tied head)."""
        quantize = quantize or self.quantize or "none"
        if self.rank is None:
            if extra_bytes:
                stored = n_rows * dim * param_bytes if stored_bytes is None else stored_bytes
                try:
                    return rank_for_bytes(n_rows, dim, self.n_clusters, (1 - self.compression) * stored - extra_bytes,
                                          param_bytes, quantize, self.block_size)
                except ValueError as err:
                    raise SettingError("compression", f"{{}}={self.compression}: {err}") from None
            if stored_bytes is None or stored_bytes == n_rows * dim * param_bytes:
                return rank_for_budget(n_rows, dim, self.n_clusters, self.compression, param_bytes, quantize,
                                       self.block_size)
            return rank_for_bytes(n_rows, dim, self.n_clusters, (1 - self.compression) * stored_bytes, param_bytes,
                                  quantize, self.block_size)
        if self.rank >= dim:
            raise SettingError("rank", f"{{}}={self.rank} must be < the table's dim={dim}")
        if quantize != "none" and self.rank % self.block_size:
            raise SettingError("rank", f"{{}}={self.rank} must be a multiple of block_size={self.block_size} "
                               "with quantized factors")
        size = factorized_bytes(n_rows, dim, self.n_clusters, self.rank, param_bytes, quantize, self.block_size)
        if size >= n_rows * dim * param_bytes:
            raise SettingError("rank", f"{{}}={self.rank} with n_clusters={self.n_clusters} stores {size:,} bytes, "
                               f"no fewer than the {n_rows} x {dim} table's {n_rows * dim * param_bytes:,}; "
                               "lower the rank or use compression")
        return self.rank

    @property
    def uses_calibration(self) -> bool:
        return bool(self.calibration_text or self.calibration_dataset)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProjClustConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ProjClustConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, save_dir: str | Path) -> Path:
        path = Path(save_dir) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ProjClustConfig:
        """Read projclust_config.json from a directory (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"{path} not found; a compressed model directory holds {CONFIG_NAME}")
        return cls.from_dict(json.loads(path.read_text()))


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise SettingError(name, f"{{}}={value!r} must be one of {allowed}")


def _whole(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """An int (not a bool, not 2.5) within bounds."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SettingError(name, f"{{}}={value!r} must be a whole number")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise SettingError(name, f"{{}}={value} must be {bound}")


def _number(name: str, value, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(name, f"{{}}={value!r} must be a finite number")
    if minimum is not None and value < minimum:
        raise SettingError(name, f"{{}}={value} must be >= {minimum:g}")
