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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from projclust_onnx.budget import index_map_bytes
from projclust_onnx.config import ProjClustConfig
from projclust_onnx.errors import SettingError, literal
from projclust_onnx.model_files import load_model, model_bytes
from projclust_onnx.output_dir import check_output_dir


@dataclass
class FilePlan:
    """One model file: the loaded model, its word-table lookup and the heads that read the table."""

    onnx_path: Path
    model: ir.Model
    match: object  # passes.EmbeddingMatch
    heads: list = field(default_factory=list)  # passes.Head, rewritten with the factors (head="factorize")
    input_bytes: int = 0
    untied_head: str | None = None  # the dense head's copy of the table, left as it was (head="keep")
    table_key: str = ""  # files with the same key share one fit

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
    rank: int | None  # None when the chooser picks it (target_ratio)
    quantize: str  # how U is stored: the config's choice, else as the input table was stored
    skipped: list[tuple[str, str, int]] = field(default_factory=list)  # (file, why, bytes): copied as they are

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
        return self.match.dtype.numpy().itemsize

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
                     overwrite: bool = False, factorization=None) -> CompressionPlan:
    """Check the output, every model file, its lookups and heads, and the budget; raise ValueError naming the
    first problem (and the file, when there are several)."""
    paths = [onnx_paths] if isinstance(onnx_paths, Path) else list(onnx_paths)
    save_dir = check_output_dir(save_dir, overwrite, [*paths, source_dir])
    files, skipped = [], []
    for path in paths:
        try:
            plan = _plan_file(path, config)
        except _NoLookup as err:
            if len(paths) == 1:
                raise ValueError(str(err)) from None
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
    shapes = {(f.match.shape, f.match.dtype) for f in files}
    if len(shapes) > 1:
        raise ValueError(f"the files hold word tables of different shapes or types {sorted(map(str, shapes))}; "
                         "compress them one at a time (file_name=..., --file-name)")
    first = files[0]
    n, d = first.match.shape
    if config.n_clusters > n:
        raise SettingError("n_clusters", f"{{}}={config.n_clusters} must be <= the table's {n} rows")
    quantize = config.quantize or {None: "none", 8: "int8", 4: "int4"}[first.match.bits]
    tied = any(f.heads for f in files)
    if tied and config.target_ratio is not None:
        head = next(h for f in files for h in f.heads)
        raise SettingError("head", f"target_ratio cannot be used with a tied LM head ({literal(head.describe())}): "
                           "the chooser's plain quantization of the table cannot rewrite the head. Give "
                           "compression (and quantize) instead, or set {} to 'keep' to keep the head dense (the "
                           "model becomes untied)")
    itemsize = first.match.dtype.numpy().itemsize
    extra = index_map_bytes(n) if tied else 0
    if config.target_ratio is not None:
        rank = None
    elif factorization is None:
        rank = config.rank_for(n, d, itemsize, quantize, first.match.stored_bytes, extra_bytes=extra)
    elif (factorization.n_rows, factorization.dim) != (n, d):
        raise ValueError(f"the factorization is {factorization.n_rows} x {factorization.dim} but the table "
                         f"is {n} x {d}")
    else:
        rank = factorization.rank
    if factorization is None:  # refuse before any work a fit that cannot fit in memory (issue 18)
        from projclust_onnx.clustering import check_fit_memory
        check_fit_memory(n, d, 8 if rank is None else config.n_clusters, rank or d - 1)
    return CompressionPlan(save_dir, files, rank, quantize, skipped)


class _NoLookup(ValueError):
    """The file reads no word table from the token ids (e.g. a vision tower): copied as it is."""


def _plan_file(path: Path, config: ProjClustConfig) -> FilePlan:
    from projclust_onnx.parity import check_feedable
    from projclust_onnx.passes import check_opset, search_word_embedding

    model = load_model(path)
    try:
        check_opset(model)
    except ir.passes.PreconditionError as err:
        raise ValueError(str(err)) from err
    names = [v.name for v in model.graph.inputs]
    if config.ids_input not in names:
        raise _NoLookup(f"the model has no graph input named {config.ids_input!r} (inputs: {names}); pass the "
                        "token-id input's name as ids_input")
    search = search_word_embedding(model.graph, config.ids_input)
    try:
        match = search.single()
    except ValueError as err:
        if search.matches or search.factorized or search.fused or search.standard_quantized:
            raise
        raise _NoLookup(str(err)) from None
    heads = match.heads(model.graph) if match.storage == "float" else []
    untied = None
    if not heads:
        match.check_untied()
    elif config.head == "keep":
        kept = [h for h in heads if h.form == "copy"]
        if len(kept) != len(heads):  # a head reading the table itself would break when the table goes
            others = ", ".join(h.describe() for h in heads if h.form != "copy")
            raise SettingError("head", f"{literal(others)} reads the word table itself, so it cannot be kept dense "
                               "while the table is replaced; set {} to 'factorize'")
        untied, heads = ", ".join(sorted({h.weight.name for h in kept})), []
    check_feedable(model, config.ids_input)
    return FilePlan(path, model, match, heads, model_bytes(path), untied, _table_key(match))


def _table_key(match) -> str:
    """A digest of the dense table's values, so that files sharing a table share its fit."""
    table = np.ascontiguousarray(match.dense())
    return hashlib.sha256(table.view(np.uint8)).hexdigest() + str(table.shape) + table.dtype.str
