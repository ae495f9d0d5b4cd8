"""The plan of one compression: every check that cannot depend on the fit, done before it.

A fit takes seconds to minutes; a refusal found after it wastes them. So every model
file is read and checked (onnx.checker, opset), its lookups and tied heads found and
checked, the parity check's feeds and the budget worked out, and the output directory
checked, all before anything is clustered or written.

An export may hold several files reading the same table (an encoder-decoder's encoder,
decoder, decoder with past and merged decoder): each is planned, and files whose
tables hold the same values share one fit.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from projclust_onnx.common.errors import SettingError, literal
from projclust_onnx.core.budget import index_map_bytes
from projclust_onnx.pipeline.config import ProjClustConfig
from projclust_onnx.pipeline.model_files import load_model, model_bytes
from projclust_onnx.pipeline.output_dir import check_output_dir, check_room
from projclust_onnx.pipeline.parity import image_dims_of, max_positions_of
from projclust_onnx.storage import registry
from projclust_onnx.storage.registry import name_for_bits

logger = logging.getLogger(__name__)
# Below this share of the files' bytes, the word table is too small a part of the model to be worth much.
SMALL_SHARE = 0.01


@dataclass
class FilePlan:
    """One model file: the loaded model (the one rewritten), the analysis of its word table (found once,
    handed to every pass), and the heads that read the table."""

    onnx_path: Path
    model: ir.Model
    analysis: object  # passes.WordTableAnalysis of `model`
    heads: list = field(default_factory=list)  # passes.Head, rewritten with the factors (head="factorize")
    input_bytes: int = 0
    untied_head: str | None = None  # the dense head's copy of the table, left as it was (head="keep")
    table_key: str = ""  # files with the same key share one fit
    rank: int | None = None  # this file's rank and U storage: each file is compressed within its own bytes
    quantize: str = registry.FLOAT_U
    cosine_bound: float | None = None  # outputs after quantized activations: the bound measured before the fit

    @property
    def match(self):
        """The first lookup of the table (passes.EmbeddingMatch)."""
        return self.analysis.match

    @property
    def stored_bytes(self) -> int:
        """Bytes of the table copies this file holds that the rewrite replaces: the table, and a head's copies."""
        from projclust_onnx.passes import head_copies

        return self.match.stored_bytes + sum(copy.const_value.nbytes for copy in head_copies(self.heads))

    @property
    def table_copies(self) -> int:
        from projclust_onnx.passes import head_copies

        return 1 + len(head_copies(self.heads))


@dataclass
class CompressionPlan:
    """What will be compressed and where: every file's plan, the rank, how U is stored."""

    save_dir: Path
    files: list[FilePlan]
    skipped: list[tuple[str, str, int]] = field(default_factory=list)  # (file, why, bytes): copied as they are
    max_positions: int | None = None  # the model's position limit: the parity check's sequences stay within it
    image: dict = field(default_factory=dict)  # an image input's channels, height and width (config.json)

    # The rank (None when the chooser picks it: target_ratio) and how U is stored (the config's choice, else
    # as the input table was stored) are per file: an int8 variant beside a float model keeps int8 bytes.
    @property
    def rank(self) -> int | None:
        return self.first.rank

    @property
    def quantize(self) -> str:
        return self.first.quantize

    # The first file stands for the table in the report and the fit's settings.
    @property
    def first(self) -> FilePlan:
        return self.files[0]

    @property
    def match(self):
        return self.first.match

    @property
    def model(self) -> ir.Model:
        return self.first.model

    @property
    def onnx_path(self) -> Path:
        return self.first.onnx_path

    @property
    def table(self) -> np.ndarray:
        """The float table the model sees (dequantized when stored quantized)."""
        return self.match.dense()

    @property
    def itemsize(self) -> int:
        """Bytes of one value of the float table (what ratios count against)."""
        return self.match.table_dtype.numpy().itemsize

    @property
    def shape(self) -> tuple[int, int]:
        return self.match.shape

    @property
    def input_bytes(self) -> int:
        return sum(f.input_bytes for f in self.files) + sum(size for _, _, size in self.skipped)

    @property
    def stored_bytes(self) -> int:
        return sum(f.stored_bytes for f in self.files)

    @property
    def tied(self) -> bool:
        return any(f.heads for f in self.files)

    @property
    def untied_head(self) -> str | None:
        return ", ".join(f.untied_head for f in self.files if f.untied_head) or None

    def groups(self) -> dict[str, list[FilePlan]]:
        """Files by table content: one fit each."""
        out: dict[str, list[FilePlan]] = {}
        for f in self.files:
            out.setdefault(f.table_key, []).append(f)
        return out


def plan_compression(onnx_paths: Path | list[Path], source_dir: Path, save_dir: Path, config: ProjClustConfig, *,
                     overwrite: bool = False, factorization=None, inputs: tuple[Path, ...] = ()) -> CompressionPlan:
    """Check the output, every model file, its lookups and heads, and the budget; raise ValueError naming the
    first problem (and the file, when there are several). `inputs`: further paths the output must not
    overlap (the Hugging Face folder an export was made from)."""
    paths = [onnx_paths] if isinstance(onnx_paths, Path) else list(onnx_paths)
    save_dir = check_output_dir(save_dir, overwrite, [*paths, source_dir, *inputs])
    if factorization is None:
        _check_device(config.device)
        _check_calibration_files(config.calibration_text)
        if config.calibration_dataset:
            from projclust_onnx.common.data import check_source

            try:
                check_source(config.calibration_dataset)
            except ValueError as err:
                raise SettingError("calibration_dataset", f"{{}}: {literal(str(err))}") from None
    files, skipped = [], []
    for path in paths:
        try:
            plan = _plan_file(path, config)
        except _NoLookup as err:
            if len(paths) == 1:
                raise SettingError(err.param, err.message) from None
            skipped.append((path.name, str(err), model_bytes(path)))
            continue
        except SettingError as err:
            if len(paths) == 1:
                raise
            raise SettingError(err.param, f"{literal(path.name)}: {err.message}") from err
        except ValueError as err:
            if len(paths) == 1:
                raise
            raise ValueError(f"{path.name}: {err}") from err
        files.append(plan)
    if not files:
        raise ValueError("no file holds a word-embedding lookup of the token ids: " +
                         "; ".join(f"{name}: {why}" for name, why, _ in skipped))
    shapes = {f.match.shape for f in files}
    if len(shapes) > 1:
        raise ValueError(f"the files hold word tables of different shapes or types {sorted(map(str, shapes))}; "
                         "compress them one at a time (file_name=..., --file-name)")
    first = files[0]
    n, d = first.match.shape
    if config.n_clusters > n:
        raise SettingError("n_clusters", f"{{}}={config.n_clusters} must be <= the table's {n} rows")
    tied = any(f.heads for f in files)
    entry = registry.method_format(config.method)
    whole = " or ".join(registry.whole_table_methods())
    if tied and config.target_ratio is not None and entry.branches:
        head = next(h for f in files for h in f.heads)
        raise SettingError("head", f"{{target_ratio}} cannot be used with a tied LM head "
                           f"({literal(head.describe())}): the chooser's plain quantization of the table cannot "
                           f"rewrite the head. Give {{compression}} (and {{quantize}}) instead, or {{method}} {whole} "
                           "(the head reads the decoded table), or set {} to 'keep' to keep the head dense "
                           "(the model becomes untied)")
    if factorization is not None and not entry.branches:
        factors = " or ".join(registry.method_format(registry.default_method()).methods)
        raise SettingError("method", f"{{}}={config.method!r} cannot write a given factorization (fine-tuned factors "
                           f"are U and V): use {{method}} {factors}")
    if factorization is not None and (factorization.n_rows, factorization.dim) != (n, d):
        raise ValueError(f"the factorization is {factorization.n_rows} x {factorization.dim} but the table "
                         f"is {n} x {d}")
    extra = index_map_bytes(n) if tied else 0
    for f in files:
        f.quantize = config.quantize or _kept_storage(f.match, config)
        itemsize = f.match.table_dtype.numpy().itemsize  # ratios count the float table
        if factorization is not None:
            f.rank = factorization.rank
        elif not entry.branches:
            _check_method_fits(entry, n, d, f.match.stored_bytes, config, itemsize, tied)
        elif config.target_ratio is None:
            try:
                # the factors are written in the lookup's own float type: their bytes count in it
                f.rank = config.rank_for(n, d, f.match.dtype.numpy().itemsize, f.quantize, f.match.stored_bytes,
                                         extra_bytes=extra)
            except SettingError as err:
                if len(files) == 1:
                    raise
                raise SettingError(err.param, f"{literal(f.onnx_path.name)}: {err.message}") from err
        else:
            _check_target_reachable(n, d, itemsize, config.target_ratio)
    _check_initializer_limit(files, config, factorization)
    share = sum(f.stored_bytes for f in files) / max(1, sum(f.input_bytes for f in files))
    if share < SMALL_SHARE:
        logger.warning("projclust-onnx: warning: the word table is %.2f%% of the model's bytes (%s x %s); compressing "
                       "it saves little", 100 * share, n, d)
    if factorization is None and not entry.branches:  # a fit that cannot fit in memory is refused
        from projclust_onnx.storage.clustering import available_memory, memory_limit

        need, available = entry.fit_bytes(n, d), available_memory()
        if available is not None and need > available:
            raise ValueError(f"fitting {entry.plural()} of the {n} x {d} table needs about {need / 2**30:.1f} GiB but "
                             f"{available / 2**30:.1f} GiB is left ({memory_limit()}); free memory, raise the "
                             "limit, or run on a larger machine")
    elif factorization is None:  # before any work (the chooser's estimate covers its codebooks too)
        from projclust_onnx.storage.clustering import check_fit_memory

        rank = first.rank
        check_fit_memory(n, d, 8 if rank is None else config.n_clusters, rank or d - 1)
    plan = CompressionPlan(save_dir, files, skipped, max_positions_of(source_dir), image_dims_of(source_dir))
    # Room for every file the output will hold (at most the input's size: each model file shrinks,
    # companions are copied) plus the parity check's two models of the largest file, written in the stage.
    check_room(save_dir.parent, _directory_bytes(source_dir, paths) + 2 * max(f.input_bytes for f in files))
    return plan


def _check_device(device: str) -> None:
    """A CUDA device asked for on a machine without one is refused before any work."""
    from projclust_onnx.common.device import resolve_device

    resolve_device(device)


def _check_initializer_limit(files: list[FilePlan], config: ProjClustConfig, factorization) -> None:
    """--max-initializer-bytes, before the fit: refused when an initializer the rewrite keeps, or one the
    factors will certainly write, is over the limit and read by what cannot read it in row blocks."""
    limit = config.max_initializer_bytes
    if limit is None:
        return
    from projclust_onnx.passes import head_copies, unsplittable_readers

    for f in files:
        replaced = {v for node in f.match.nodes for v in node.inputs if v is not None and v.is_initializer()}
        replaced |= set(head_copies(f.heads)) if config.head != "keep" else set()
        for name, value in f.model.graph.initializers.items():
            if value in replaced or value.const_value is None or value.const_value.nbytes <= limit:
                continue
            why = unsplittable_readers(value)
            if why is not None:
                raise SettingError("max_initializer_bytes", f"{{}}={limit:,}: the model's initializer "
                                   f"{literal(repr(name))} ({value.const_value.nbytes:,} bytes) is read by "
                                   f"{literal(why)}, which cannot read it in row blocks; raise the limit to at least "
                                   f"{value.const_value.nbytes:,}")
    if not registry.method_format(config.method).branches or \
            (config.target_ratio is not None and factorization is None):
        return  # the storage is chosen by the fit: the rewrite checks what it writes
    n, d = files[0].match.shape
    for f in files:
        for what, nbytes, sized_by_rank in _factor_parts_read_whole(n, d, config, f, factorization, bool(f.heads)):
            if nbytes > limit:
                also = ", or lower {rank} (a smaller --compression)" if sized_by_rank else ""
                raise SettingError("max_initializer_bytes", f"{{}}={limit:,}: the factors' {what} take "
                                   f"{nbytes:,} bytes in one initializer that no reader can take in row blocks; "
                                   f"raise the limit to at least {nbytes:,}{also}")


def _factor_parts_read_whole(n: int, d: int, config: ProjClustConfig, f: FilePlan, factorization,
                             tied: bool) -> list[tuple[str, int, bool]]:
    """storage.factorization.Factors.whole_parts for this file's planned k, j and U storage."""
    k = factorization.n_clusters if factorization is not None else config.n_clusters
    factors = registry.method_format(config.method)(k, f.rank, registry.factor_storage(f.quantize, config.block_size))
    return factors.whole_parts(n, d, f.match.dtype.numpy().itemsize, tied, config.lookup_form)


def _check_calibration_files(paths: list[str]) -> None:
    """Calibration files are read after the output is staged and can take minutes: a missing one is refused first."""
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            what = ("is a directory, not a text file" if path.is_dir() else
                    "is a named pipe (FIFO), not a text file" if path.is_fifo() else
                    "is a device, not a text file" if path.is_char_device() or path.is_block_device() else
                    "is a socket, not a text file" if path.is_socket() else "does not exist")
            raise SettingError("calibration_text", f"{{}}: {literal(str(path))} {what}; give text files")
        if not os.access(path, os.R_OK):
            raise SettingError("calibration_text", f"{{}}: {literal(str(path))} is not readable; check its "
                               "permissions")


def _kept_storage(match, config) -> str:
    """The storage of U that keeps the table's own bits (float, int8, int4) when --quantize is not given; a
    table in bits no storage of U holds (2-bit blocks) is refused where factors would need one."""
    try:
        return name_for_bits(match.bits)
    except ValueError:
        whole = registry.whole_table_methods()
        if config.method in whole or config.target_ratio is not None:
            return registry.FLOAT_U  # the chooser and the whole-table formats pick their own storage
        raise SettingError("quantize", f"the table is stored as {match.storage}, and no storage of the factors' U "
                           f"keeps those bits; give {{}} {' or '.join(reversed(registry.QUANTIZE[1:]))}, or "
                           f"{{target_ratio}}, or {{method}} {' or '.join(whole)}") from None


def _check_target_reachable(n: int, d: int, itemsize: int, target_ratio: float) -> None:
    """The chooser's smallest candidate must fit the table's bytes / target_ratio."""
    from projclust_onnx.core.chooser import SLACK, smallest_candidate_bytes

    smallest = smallest_candidate_bytes(n, d, itemsize)
    if smallest > n * d * itemsize / target_ratio * SLACK:
        raise SettingError("target_ratio", f"{{}}={target_ratio:g} asks for {n * d * itemsize / target_ratio:,.0f} "
                           f"bytes, but the smallest storage of the {n} x {d} table takes {smallest:,} bytes "
                           f"({n * d * itemsize / smallest:.1f}x smaller); ask for at most that ratio")


def _check_method_fits(entry, n: int, d: int, stored_bytes: int, config, itemsize: int, tied: bool = False) -> None:
    """At least one storage of a whole-table --method (`entry`, a format class) must fit the budget of
    compression (of the table as stored) or target_ratio (of the float table); a budget far above the largest
    (UNDERSIZE times it) is refused too, since the output would be much smaller than asked. `tied`: the
    storages a tied head reads."""
    from projclust_onnx.pipeline.report import UNDERSIZE

    budget, found = method_storages(entry, n, d, stored_bytes, config, itemsize, tied)
    param = "target_ratio" if config.target_ratio is not None else "compression"
    value = config.target_ratio if config.target_ratio is not None else config.compression
    if not found:
        raise SettingError(param, f"{{}}={value:g} leaves {budget:,.0f} bytes, fewer than {entry.smallest_phrase()} "
                           f"take for the {n} x {d} table ({entry.smallest_bytes(n, d):,}); ask for less, or use "
                           f"{{method}} {registry.default_method()}")
    largest = max(s.nbytes(n, d) for s in found)
    if largest * UNDERSIZE < budget:
        raise SettingError(param, f"{{}}={value:g} leaves {budget:,.0f} bytes, but the largest of the "
                           f"{entry.plural()} of the {n} x {d} table takes {largest:,}: ask for a ratio of "
                           f"at least {n * d * itemsize / largest:.1f} ({{compression}} at least "
                           f"{1 - largest / stored_bytes:.2f}), or use {{method}} {registry.default_method()} or "
                           "int8/int4 quantization")


def method_storages(entry, n: int, d: int, stored_bytes: int, config, itemsize: int = 4, tied: bool = False) -> tuple:
    """(budget, storages): the bytes a whole-table --method may take (method_budget) and the storages of its
    format (`entry`) compress tries within them (those a tied head reads when `tied`); what `inspect` lists."""
    from projclust_onnx.core.chooser import SLACK

    budget = method_budget(n, d, stored_bytes, config, itemsize)
    return budget, entry.method_storages(n, d, budget * SLACK, tied=tied)


def method_budget(n: int, d: int, stored_bytes: int, config, itemsize: int = 4) -> float:
    """The bytes a whole-table --method may take: the float table's / target_ratio, or (1 - compression) of the
    table as stored."""
    if config.target_ratio is not None:
        return n * d * itemsize / config.target_ratio
    return (1 - config.compression) * stored_bytes


def _directory_bytes(source_dir: Path, paths: list[Path]) -> int:
    """Bytes of the model files and of the companions copied beside them."""
    companions = sum(p.stat().st_size for p in Path(source_dir).rglob("*")
                     if p.is_file() and p.suffix != ".onnx" and not p.name.startswith(".")) \
        if Path(source_dir).is_dir() else 0
    return sum(model_bytes(p) for p in paths) + companions


class _NoLookup(SettingError):
    """The file reads no word table from the token ids (e.g. a vision tower): copied as it is."""

    def __init__(self, message: str) -> None:
        super().__init__("ids_input", message)


def analyse_file(path: Path, ids_input: str, checked: bool = True):
    """(model, analysis): the model file loaded, and the analysis of its word table (passes.WordTableAnalysis),
    None when the model has no input `ids_input`. `checked`: onnx.checker with shape inference, and ValueError
    for an opset the rewrite cannot write (what compress needs; inspect only describes)."""
    from projclust_onnx.passes import analyse_word_table, check_opset

    model = load_model(path, full_check=checked)
    try:
        if checked:
            check_opset(model)
    except ir.passes.PreconditionError as err:
        raise ValueError(str(err)) from err
    if ids_input not in {v.name for v in model.graph.inputs}:
        return model, None
    return model, analyse_word_table(model.graph, ids_input)


def _plan_file(path: Path, config: ProjClustConfig) -> FilePlan:
    from projclust_onnx.pipeline.parity import check_feedable

    model, analysis = analyse_file(path, config.ids_input)
    if analysis is None:
        names = [v.name for v in model.graph.inputs]
        raise _NoLookup(literal(f"the model has no graph input named {config.ids_input!r} (inputs: {names}); ") +
                        "pass the token-id input's name as {}")
    if not analysis.found:
        if analysis.matches or analysis.factorized or analysis.fused or analysis.standard_quantized:
            raise ValueError(analysis.error)
        raise _NoLookup(literal(analysis.error)) from None
    match = analysis.match
    if match.dtype == ir.DataType.BFLOAT16:
        raise ValueError(f"the word table {match.table.name!r} is stored as bfloat16, which the rewrite does not "
                         "write; export the model in float32 or float16 (optimum-cli export onnx --dtype fp16) and "
                         "compress that")
    n, d = match.shape
    if n <= d:
        raise ValueError(f"the word table {match.table.name!r} has {n} rows of width {d}: with no more rows than "
                         "columns, factors (n*j + k*j*d values) can only beat n*d by a few rows' worth, so there is "
                         "nothing to gain; leave this model's embedding as it is")
    heads = list(analysis.tied_heads()) if match.stored_float else []
    untied = None
    concatenated = ", ".join(v.name for v in analysis.concatenated)
    if concatenated and config.head != "keep":
        raise SettingError("head", f"the LM head's matrix {literal(concatenated)} holds the word table's transpose "
                           "concatenated with other rows (MobileBERT's concat(E^T, dense)), which the rewrite does not "
                           "factorize; set {} to 'keep' to compress the lookup and keep that matrix dense (the model "
                           "becomes untied)")
    if not heads:
        analysis.check_untied()
    elif config.head == "keep":
        kept = [h for h in heads if h.rule.reads_copy]
        if len(kept) != len(heads):  # a head reading the table itself would break when the table goes
            others = ", ".join(h.describe() for h in heads if not h.rule.reads_copy)
            raise SettingError("head", f"{literal(others)} reads the word table itself, so it cannot be kept dense "
                               "while the table is replaced; set {} to 'factorize'")
        untied, heads = ", ".join(sorted({h.weight.name for h in kept})), []
    untied = ", ".join(filter(None, [untied, concatenated])) or None
    check_feedable(model, config.ids_input)
    return FilePlan(path, model, analysis, heads, model_bytes(path), untied, _table_key(match))


def _table_key(match) -> str:
    """A digest of the dense table's values, so that files sharing a table share its fit; a table
    holding NaN or infinite values (a damaged model) is refused here, where it is read anyway."""
    table = np.ascontiguousarray(match.dense())
    bad = ~np.isfinite(table)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(f"the word table {match.table.name!r} holds {int(bad.sum())} NaN or infinite values (rows "
                         f"{', '.join(map(str, rows[:3]))}{', ...' if len(rows) > 3 else ''}); the model is damaged: "
                         "re-export it, or repair those rows first")
    return hashlib.sha256(table.view(np.uint8)).hexdigest() + str(table.shape) + table.dtype.str + match.storage
