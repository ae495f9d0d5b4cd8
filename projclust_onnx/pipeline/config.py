"""ProjClustConfig: every choice of one compression, in sections, saved beside the model it produced.

As Optimum's ORTConfig holds an optimization and a quantization config, ProjClustConfig holds five
sections, each a small dataclass that checks its own fields: `budget` (how much smaller), `clustering`
(the ProjectiveClustering that fits the table), `calibration` (how the rows are weighted), `graph` (the
rewritten graph and its runtime) and `storage` (how U is stored). Every setting has one flat name, the
same in its section, on the command line and in earlier versions' code and files:
ProjClustConfig(compression=0.4, n_clusters=5) routes each keyword to its section, and config.n_clusters
reads config.clustering.n_clusters.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from projclust_onnx.common import arguments as arg
from projclust_onnx.common.errors import SettingError, SettingTypeError, literal
from projclust_onnx.core.budget import QUANTIZE, rank_for
from projclust_onnx.storage import registry

CONFIG_NAME = "projclust_config.json"
DEFAULT_CLUSTERS = 5
MAX_CHECK_LENGTH = 1 << 16  # the numeric check's sequences: longer ones take minutes and gigabytes
PRIORS = ("wordfreq", "none")  # the row-weight priors (core/prior.py), and none
HEAD_CHOICES = ("factorize", "keep")
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed and numpy accept alike
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
# Beyond these the row weights stop meaning anything: a special token already weighs a million times the
# rest of the table, and float64 sums of such weights overflow long before 1e308.
MAX_SPECIAL_TOKEN_WEIGHT = 1e6
MAX_SMOOTHING = 1e12
# The nested form of the file is version 2; version 1, one key per setting and no version key, is the
# flat form earlier versions wrote, still read (and written by save_pretrained(flat=True)).
VERSION_KEY = "format_version"
FORMAT_VERSION = 2


@dataclass
class BudgetConfig:
    """How much smaller the table gets, said one of three ways.

    Attributes:
        compression: fraction of the table's bytes, as stored, to remove (0.4 = 40% smaller; for a
            table ONNX Runtime stored in int8, 40% fewer bytes than that int8 table), converted to
            the largest rank that fits (see budget.rank_for).
        rank: j, given directly instead of compression.
        target_ratio: pick the method, k, j and bits (plain quantization, codebooks, SVD, projective
            clustering) that minimise the weighted reconstruction error within the float table's
            bytes / target_ratio; method, n_clusters, compression, rank and quantize are then chosen.
    """

    compression: float | None = 0.4
    rank: int | None = None
    target_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.target_ratio is not None:
            if arg.number("target_ratio", self.target_ratio) <= 1:
                raise SettingError("target_ratio", f"{{}}={self.target_ratio} must be > 1, e.g. 10 for a table "
                                   "ten times smaller")
            self.target_ratio = float(self.target_ratio)
            if self.rank is not None:
                raise SettingError("target_ratio", "give {} or {rank}, not both: the chooser picks the rank")
            self.compression = None
        if self.rank is not None:
            self.compression = None
            self.rank = arg.whole("rank", self.rank, 1)
        elif self.target_ratio is None:
            if self.compression is None:
                raise SettingError("compression", "give {} (e.g. 0.4) or {rank}")
            if not 0.0 < arg.number("compression", self.compression) < 1.0:
                raise SettingError("compression", f"{{}}={self.compression} must lie in (0, 1), e.g. 0.4 for a 40% "
                                   "smaller table")
            self.compression = float(self.compression)


@dataclass
class ClusteringConfig:
    """The ProjectiveClustering that fits the table: its constructor's parameters, by the same names.

    Attributes:
        method: a registered method (storage.registry.methods()): "projclust" (k subspaces), "svd" (one
            subspace: k = 1), or a format that stores the whole table, such as "codebook" (product
            quantization of the table, storage/codebook.py), sized to compression or target_ratio: the
            chooser restricted to that format; n_clusters and rank do not apply).
        n_clusters: k; None means 5 for projclust and 1 for svd and codebook.
        init, n_init, anneal_steps, max_iter, tol, z, device: the estimator's parameters of the same
            name (device: "auto", "cpu", "cuda" or "cuda:N").
        seed: the estimator's random_state; it seeds the parity check's inputs too, hence its own name.
    """

    method: str = field(default_factory=registry.default_method)
    n_clusters: int | None = None
    init: str = "kmeans"
    n_init: int = 10
    anneal_steps: int = 8
    max_iter: int = 30
    tol: float = 1e-4
    z: float = 2.0
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        from projclust_onnx.storage.clustering import INIT_METHODS

        self.method = arg.choice("method", self.method, registry.methods())
        fixed, why = registry.method_format(self.method).fixed_clusters(self.method)
        if self.n_clusters is None:
            self.n_clusters = DEFAULT_CLUSTERS if fixed is None else fixed
        self.n_clusters = arg.whole("n_clusters", self.n_clusters, 1)
        if fixed is not None and self.n_clusters != fixed:
            raise SettingError("n_clusters", f"{{}}={self.n_clusters} must be {fixed} with {{method}} {self.method}, "
                               f"{why}")
        self.init = arg.choice("init", self.init, INIT_METHODS)
        self.n_init = arg.whole("n_init", self.n_init, 1)
        self.anneal_steps = arg.whole("anneal_steps", self.anneal_steps, 0)
        self.max_iter = arg.whole("max_iter", self.max_iter, 1)
        self.seed = arg.whole("seed", self.seed, 0, MAX_SEED)
        self.tol = arg.number("tol", self.tol, minimum=0.0)
        if not 1.0 <= arg.number("z", self.z) <= 2.0:
            raise SettingError("z", f"{{}}={self.z} must lie in [1, 2] (2: squared distances; 1: robust)")
        self.z = float(self.z)
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise SettingError("device", f"{{}}={literal(repr(self.device))} must be 'auto', 'cpu', 'cuda' or "
                               "'cuda:N'")


@dataclass
class CalibrationConfig:
    """How the rows are weighted.

    Attributes:
        calibration_text: text files whose token frequencies weight the rows.
        calibration_dataset: a datasets name "NAME[:CONFIG][@SPLIT]" or CSV/JSON file for the same.
        calibration_column: the text column of calibration_dataset.
        calibration_smoothing: pseudo-count added to every token's frequency, so that
            tokens unseen in calibration still count: weight = count + smoothing.
        special_token_weight: each of the tokenizer's special tokens ([CLS], [SEP], ...)
            weighs this many times the rest of the table together, so the rows that
            occur in every input are fit (nearly) exactly; 0 weighs them like any row.
        calibration_prior: "wordfreq" (default): broad word frequencies in the languages the tokenizer
            covers weight the rows where no calibration text is given, and are blended into a given
            text's counts (core/prior.py); "none": rows unweighted without text, the text's counts alone.
    """

    calibration_text: list[str] = field(default_factory=list)
    calibration_dataset: str | None = None
    calibration_column: str = "text"
    calibration_smoothing: float = 1.0
    special_token_weight: float = 30.0
    calibration_prior: str = "wordfreq"

    def __post_init__(self) -> None:
        self.calibration_prior = arg.choice("calibration_prior", self.calibration_prior, PRIORS)
        self.special_token_weight = arg.number("special_token_weight", self.special_token_weight, 0.0,
                                               MAX_SPECIAL_TOKEN_WEIGHT)
        self.calibration_smoothing = arg.number("calibration_smoothing", self.calibration_smoothing, 0.0, MAX_SMOOTHING)
        self.calibration_text = arg.paths("calibration_text", self.calibration_text)
        self.calibration_dataset = arg.path("calibration_dataset", self.calibration_dataset, optional=True)
        self.calibration_column = arg.text("calibration_column", self.calibration_column)


@dataclass
class GraphConfig:
    """The rewritten graph and the runtime it is shaped for.

    Attributes:
        layout: runtime subgraph, "grouped" or "onehot" (see passes.factorize_embedding).
        lookup_form: how quantized storage is read: "contrib" (com.microsoft.GatherBlockQuantized)
            or "standard" (opset-13 operators only, for runtimes without contrib ops).
        head: what to do with a tied LM head (the table read by MatMul or Gemm, directly, through
            Transpose, or as its own transposed copy, which is how Optimum exports a tied model
            without accelerate): "factorize" (default) rewrites it with the same factors, so the
            model stays tied and the head costs n*j + k*j*d multiply-adds per position instead of
            n*d; quantized U is read by MatMulNBits, and target_ratio is refused. "keep" leaves it
            dense and compresses the lookup only: the model is then untied, and the report says so.
        ids_input: name of the token-id graph input.
        max_initializer_bytes: split every initializer larger than this into row blocks (or column
            blocks of a MatMul weight) after the rewrite: WebGPU holds at most 256 MiB (268435456) in
            one buffer. None (default): no limit.
        check_lengths: the sequence lengths the numeric check runs the models at (default None: 1, 17 and
            64, within the model's positions); a model that accepts only some lengths (windowed attention,
            Longformer's or Nystromformer's) needs lengths it accepts.
    """

    layout: str = "grouped"
    lookup_form: str = "contrib"
    head: str = "factorize"
    ids_input: str = "input_ids"
    max_initializer_bytes: int | None = None
    check_lengths: list[int] | None = None

    def __post_init__(self) -> None:
        from projclust_onnx.passes.builder import LOOKUP_FORMS
        from projclust_onnx.passes.factorize_embedding import LAYOUTS

        self.layout = arg.choice("layout", self.layout, LAYOUTS)
        self.lookup_form = arg.choice("lookup_form", self.lookup_form, LOOKUP_FORMS)
        if self.head is None:  # configs saved before the head pass existed
            self.head = "factorize"
        self.head = arg.choice("head", self.head, HEAD_CHOICES)
        self.ids_input = arg.text("ids_input", self.ids_input)
        if self.max_initializer_bytes is not None:
            self.max_initializer_bytes = arg.whole("max_initializer_bytes", self.max_initializer_bytes, 1024)
        if self.check_lengths is not None:
            if isinstance(self.check_lengths, (str, bytes)) or not isinstance(self.check_lengths, (list, tuple)) \
                    or not self.check_lengths:
                raise SettingTypeError("check_lengths", f"{{}}={literal(repr(self.check_lengths))} must be a "
                                       "non-empty list of sequence lengths, e.g. [64, 128]")
            self.check_lengths = [arg.whole("check_lengths", n, 1, MAX_CHECK_LENGTH) for n in self.check_lengths]


@dataclass
class StorageConfig:
    """How U is stored.

    Attributes:
        quantize: "none" (the table's float type), "int8" or "int4" (blocks along j with float16
            scales and zero points; V in float16). None: as the input table is stored (none for a
            float table, int8/int4 for a table ONNX Runtime's quantizers stored so).
        block_size: values per quantization block (a power of two >= 16); quantized ranks are
            multiples of it. The chooser (target_ratio) tries 32, 64 and 128 itself.
    """

    quantize: str | None = None
    block_size: int = 32

    def __post_init__(self) -> None:
        if self.quantize is not None:
            self.quantize = arg.choice("quantize", self.quantize, QUANTIZE)
        self.block_size = arg.whole("block_size", self.block_size, 16)
        if self.block_size & (self.block_size - 1):
            raise SettingError("block_size", f"{{}}={self.block_size} must be a power of two >= 16 "
                               "(ONNX Runtime's GatherBlockQuantized)")


SECTIONS = {"budget": BudgetConfig, "clustering": ClusteringConfig, "calibration": CalibrationConfig,
            "graph": GraphConfig, "storage": StorageConfig}
# Each setting's flat name -> the section that holds it under that name.
SECTION_OF = {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
# The key order of the flat form, as version 1 wrote it before the sections; a later setting follows in
# section order.
FLAT_ORDER = ("method", "n_clusters", "compression", "rank", "quantize", "block_size", "lookup_form", "target_ratio",
              "head", "max_initializer_bytes", "layout", "init", "n_init", "anneal_steps", "max_iter", "tol", "z",
              "seed", "device", "ids_input", "calibration_text", "calibration_dataset", "calibration_column",
              "calibration_smoothing", "special_token_weight", "calibration_prior", "check_lengths")


@dataclass(init=False)
class ProjClustConfig:
    """How to compress a word embedding: five sections (see the module's docstring and each section's).

    ProjClustConfig(budget=BudgetConfig(rank=64), clustering={"n_clusters": 3}) takes each section as
    its dataclass or a dict of its fields (a missing one: its defaults); ProjClustConfig(rank=64,
    n_clusters=3) takes the flat names, each routed to its section. A flat keyword given beside its
    section overrides the section's value, which is how dataclasses.replace(config, n_clusters=3)
    works. Each setting reads by its flat name too (config.n_clusters), read-only: build a new config
    (dataclasses.replace) to change one. Each section checks its own fields; checks across sections
    are made here (codebooks take no rank and no quantize), or by the plan when they need the model
    (a tied head refuses target_ratio and codebooks).
    """

    budget: BudgetConfig
    clustering: ClusteringConfig
    calibration: CalibrationConfig
    graph: GraphConfig
    storage: StorageConfig

    def __init__(self, *, budget: BudgetConfig | Mapping | None = None,
                 clustering: ClusteringConfig | Mapping | None = None,
                 calibration: CalibrationConfig | Mapping | None = None, graph: GraphConfig | Mapping | None = None,
                 storage: StorageConfig | Mapping | None = None, **settings) -> None:
        _refuse_unknown("ProjClustConfig", settings, [*SECTIONS, *SECTION_OF], TypeError, "keywords")
        given = {"budget": budget, "clustering": clustering, "calibration": calibration, "graph": graph,
                 "storage": storage}
        for name, cls in SECTIONS.items():
            overrides = {key: value for key, value in settings.items() if SECTION_OF[key] == name}
            setattr(self, name, cls(**{**_section_fields(name, cls, given[name]), **overrides}))
        method = self.clustering.method
        if method in registry.whole_table_methods() and self.budget.rank is not None:
            raise SettingError("rank", f"{{}} does not apply to {{method}} {method}: give {{compression}} or "
                               "{target_ratio}, and its storage is sized to it")
        if method in registry.whole_table_methods() and self.storage.quantize is not None and \
                registry.bits_of(self.storage.quantize) is not None:
            raise SettingError("quantize", f"{{}}={self.storage.quantize!r} stores factors' U; {{method}} {method} "
                               "stores the whole table in its own format: leave {} out")

    def rank_for(self, n_rows: int, dim: int, param_bytes: int = 4, quantize: str | None = None,
                 stored_bytes: int | None = None, extra_bytes: int = 0) -> int:
        """budget.rank_for with this config's budget, n_clusters and storage; `quantize` (default: the
        config's, else "none") is how U will be stored, which the model's table may decide."""
        return rank_for(n_rows, dim, self.clustering.n_clusters, compression=self.budget.compression,
                        rank=self.budget.rank, param_bytes=param_bytes,
                        quantize=quantize or self.storage.quantize or registry.FLOAT_U,
                        block_size=self.storage.block_size, stored_bytes=stored_bytes, extra_bytes=extra_bytes)

    @property
    def uses_calibration(self) -> bool:
        return bool(self.calibration.calibration_text or self.calibration.calibration_dataset)

    def to_dict(self, flat: bool = False) -> dict:
        """The nested form, {"format_version": 2, "budget": {...}, "clustering": {...}, ...}; with flat=True,
        one key per setting, the form (version 1) that earlier versions wrote and read."""
        sections = dataclasses.asdict(self)
        if not flat:
            return {VERSION_KEY: FORMAT_VERSION, **sections}
        settings = {key: value for section in sections.values() for key, value in section.items()}
        return {**{key: settings.pop(key) for key in FLAT_ORDER}, **settings}

    @classmethod
    def from_dict(cls, data: Mapping) -> ProjClustConfig:
        """A config from either form of to_dict (a dict of flat settings, sections, or both)."""
        if not isinstance(data, Mapping):
            raise SettingTypeError("config", f"{{}}={literal(repr(data))} must be a ProjClustConfig or a dict of "
                                   "its fields")
        data = dict(data)
        version = data.pop(VERSION_KEY, 1)
        if version not in (1, FORMAT_VERSION):
            raise ValueError(f"{VERSION_KEY}={version!r}: this projclust-onnx reads versions 1 and {FORMAT_VERSION} "
                             f"of {CONFIG_NAME}; a newer file needs a newer projclust-onnx")
        _refuse_unknown("ProjClustConfig", data, [*SECTIONS, *SECTION_OF])
        for name, section in SECTIONS.items():
            if isinstance(data.get(name), Mapping):
                _refuse_unknown(f"ProjClustConfig {name}", data[name], _names(section))
        return cls(**data)

    def save_pretrained(self, save_dir: str | Path, flat: bool = False) -> Path:
        """Write projclust_config.json into save_dir, in the nested form (flat=True: the flat form earlier
        versions wrote, for tools that read its keys). from_pretrained reads either."""
        path = Path(save_dir) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(flat=flat), indent=2, allow_nan=False) + "\n")
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
        """Read projclust_config.json, nested or flat, from a directory (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"{path} not found; a compressed model directory holds {CONFIG_NAME}")
        return cls.from_dict(json.loads(path.read_text()))


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _refuse_unknown(owner: str, given: Mapping, known: list[str], error: type[Exception] = ValueError,
                    word: str = "keys") -> None:
    """Raise `error` naming what `given` holds beyond `known`, and listing `known`."""
    unknown = set(given) - set(known)
    if unknown:
        raise error(f"unknown {owner} {word} {sorted(unknown)}; known {word}: {sorted(known)}")


def _section_fields(name: str, cls: type, value) -> dict:
    """The fields a section was given as: its dataclass, a dict of its fields, or None for its defaults."""
    if value is None:
        return {}
    if isinstance(value, cls):
        return {key: getattr(value, key) for key in _names(cls)}
    if isinstance(value, Mapping):
        _refuse_unknown(f"ProjClustConfig {name}", value, _names(cls), TypeError, "keywords")
        return dict(value)
    raise SettingTypeError(name, f"{{}}={literal(repr(value))} must be a {cls.__name__} or a dict of its fields")


def _read_through(section: str, name: str) -> property:
    def refuse(config, value) -> None:
        raise AttributeError(f"{name} reads config.{section}.{name} and cannot be set; build a new config: "
                             f"dataclasses.replace(config, {name}=...)")

    return property(lambda config: getattr(getattr(config, section), name), refuse,
                    doc=f"config.{section}.{name}, read-only (its flat name)")


for _name, _section in SECTION_OF.items():
    setattr(ProjClustConfig, _name, _read_through(_section, _name))
