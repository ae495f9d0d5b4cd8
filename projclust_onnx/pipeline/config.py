"""ProjClustConfig: every choice of one compression, saved beside the model it produced."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from projclust_onnx.common import arguments as arg
from projclust_onnx.common.errors import SettingError, SettingTypeError, literal
from projclust_onnx.core.budget import QUANTIZE, factorized_bytes, rank_for_bytes

CONFIG_NAME = "projclust_config.json"
METHODS = ("projclust", "svd")
DEFAULT_CLUSTERS = 5
HEAD_CHOICES = ("factorize", "keep")
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed and numpy accept alike
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# Beyond these the row weights stop meaning anything: a special token already weighs a million times the
# rest of the table, and float64 sums of such weights overflow long before 1e308.
MAX_SPECIAL_TOKEN_WEIGHT = 1e6
MAX_SMOOTHING = 1e12


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
        max_initializer_bytes: split every initializer larger than this into row blocks (or column
            blocks of a MatMul weight) after the rewrite: WebGPU holds at most 256 MiB (268435456) in
            one buffer. None (default): no limit.
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
    max_initializer_bytes: int | None = None
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
        from projclust_onnx.core.clustering import INIT_METHODS
        from projclust_onnx.passes.builder import LOOKUP_FORMS
        from projclust_onnx.passes.factorize_embedding import LAYOUTS

        self.method = arg.choice("method", self.method, METHODS)
        if self.n_clusters is None:
            self.n_clusters = 1 if self.method == "svd" else DEFAULT_CLUSTERS
        self.n_clusters = arg.whole("n_clusters", self.n_clusters, 1)
        if self.quantize is not None:
            self.quantize = arg.choice("quantize", self.quantize, QUANTIZE)
        self.block_size = arg.whole("block_size", self.block_size, 16)
        if self.block_size & (self.block_size - 1):
            raise SettingError("block_size", f"{{}}={self.block_size} must be a power of two >= 16 "
                               "(ONNX Runtime's GatherBlockQuantized)")
        self.lookup_form = arg.choice("lookup_form", self.lookup_form, LOOKUP_FORMS)
        if self.target_ratio is not None:
            if arg.number("target_ratio", self.target_ratio) <= 1:
                raise SettingError("target_ratio", f"{{}}={self.target_ratio} must be > 1, e.g. 10 for a table "
                                   "ten times smaller")
            self.target_ratio = float(self.target_ratio)
            if self.rank is not None:
                raise SettingError("target_ratio", "give {} or {rank}, not both: the chooser picks the rank")
            self.compression = None
        if self.method == "svd" and self.n_clusters != 1:
            raise SettingError("n_clusters", f"{{}}={self.n_clusters} must be 1 with {{method}} svd, the one-cluster "
                               "case; use {method} projclust for k > 1")
        if self.rank is not None:
            self.compression = None
            self.rank = arg.whole("rank", self.rank, 1)
        elif self.target_ratio is not None:
            pass
        elif self.compression is None:
            raise SettingError("compression", "give {} (e.g. 0.4) or {rank}")
        else:
            if not 0.0 < arg.number("compression", self.compression) < 1.0:
                raise SettingError("compression", f"{{}}={self.compression} must lie in (0, 1), e.g. 0.4 for a 40% "
                                   "smaller table")
            self.compression = float(self.compression)
        self.layout = arg.choice("layout", self.layout, LAYOUTS)
        if self.head is None:  # configs saved before the head pass existed
            self.head = "factorize"
        self.head = arg.choice("head", self.head, HEAD_CHOICES)
        if self.max_initializer_bytes is not None:
            self.max_initializer_bytes = arg.whole("max_initializer_bytes", self.max_initializer_bytes, 1024)
        self.init = arg.choice("init", self.init, INIT_METHODS)
        self.n_init = arg.whole("n_init", self.n_init, 1)
        self.anneal_steps = arg.whole("anneal_steps", self.anneal_steps, 0)
        self.max_iter = arg.whole("max_iter", self.max_iter, 1)
        self.seed = arg.whole("seed", self.seed, 0, MAX_SEED)
        self.tol = arg.number("tol", self.tol, minimum=0.0)
        self.special_token_weight = arg.number("special_token_weight", self.special_token_weight, 0.0,
                                           MAX_SPECIAL_TOKEN_WEIGHT)
        self.calibration_smoothing = arg.number("calibration_smoothing", self.calibration_smoothing, 0.0, MAX_SMOOTHING)
        if not 1.0 <= arg.number("z", self.z) <= 2.0:
            raise SettingError("z", f"{{}}={self.z} must lie in [1, 2] (2: squared distances; 1: robust)")
        self.z = float(self.z)
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise SettingError("device", f"{{}}={literal(repr(self.device))} must be 'auto', 'cpu', 'cuda' or "
                               "'cuda:N'")
        self.ids_input = arg.text("ids_input", self.ids_input)
        self.calibration_text = arg.paths("calibration_text", self.calibration_text)
        self.calibration_dataset = arg.path("calibration_dataset", self.calibration_dataset, optional=True)
        self.calibration_column = arg.text("calibration_column", self.calibration_column)

    def rank_for(self, n_rows: int, dim: int, param_bytes: int = 4, quantize: str | None = None,
                 stored_bytes: int | None = None, extra_bytes: int = 0) -> int:
        """The rank j this config gives a table of n_rows x dim whose values are param_bytes wide
        (the float type the model computes in) and which is stored in stored_bytes (default:
        as floats; less for a table ONNX Runtime already quantized). `extra_bytes` must fit in
        the budget besides U, V and the cluster ids (the index maps of a rewritten tied head)."""
        quantize = quantize or self.quantize or "none"
        if self.rank is None:
            stored = n_rows * dim * param_bytes if stored_bytes is None else stored_bytes
            try:
                return rank_for_bytes(n_rows, dim, self.n_clusters, (1 - self.compression) * stored - extra_bytes,
                                      param_bytes, quantize, self.block_size)
            except SettingError as err:
                raise SettingError("compression", f"{{}}={self.compression}: {err.message}") from None
        if self.rank >= dim:
            raise SettingError("rank", f"{{}}={self.rank} must be < the table's dim={dim}")
        if quantize != "none" and self.rank % self.block_size:
            raise SettingError("rank", f"{{}}={self.rank} must be a multiple of {{block_size}}={self.block_size} "
                               "with quantized factors")
        size = factorized_bytes(n_rows, dim, self.n_clusters, self.rank, param_bytes, quantize, self.block_size)
        if size >= n_rows * dim * param_bytes:
            raise SettingError("rank", f"{{}}={self.rank} with {{n_clusters}}={self.n_clusters} stores {size:,} bytes, "
                               f"no fewer than the {n_rows} x {dim} table's {n_rows * dim * param_bytes:,}; "
                               "lower {} or use {compression}")
        return self.rank

    @property
    def uses_calibration(self) -> bool:
        return bool(self.calibration_text or self.calibration_dataset)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ProjClustConfig:
        if not isinstance(data, Mapping):
            raise SettingTypeError("config", f"{{}}={literal(repr(data))} must be a ProjClustConfig or a dict of "
                                   "its fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ProjClustConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, save_dir: str | Path) -> Path:
        path = Path(save_dir) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    @classmethod
    def coerce(cls, config: ProjClustConfig | Mapping | None) -> ProjClustConfig:
        """The config an API call was given: None means the defaults, a dict goes through from_dict."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        return cls.from_dict(config)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ProjClustConfig:
        """Read projclust_config.json from a directory (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"{path} not found; a compressed model directory holds {CONFIG_NAME}")
        return cls.from_dict(json.loads(path.read_text()))


