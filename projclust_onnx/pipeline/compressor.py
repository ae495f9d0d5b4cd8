"""ProjClustCompressor: the Optimum-style front door.

    compressor = ProjClustCompressor.from_pretrained("path/to/onnx-or-hf-model")
    report = compressor.compress("out/", ProjClustConfig(compression=0.4, n_clusters=5))

The output directory is a complete model directory (model.onnx, config.json,
tokenizer files, projclust_config.json, projclust_report.json) that Optimum's
ORTModel classes and a plain onnxruntime.InferenceSession load as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from projclust_onnx.common import arguments as arg
from projclust_onnx.common.errors import SettingError, SettingTypeError, literal
from projclust_onnx.common.progress import Phases
from projclust_onnx.core.chooser import weighted_error
from projclust_onnx.passes import DensifyEmbeddingPass, SplitInitializersPass, with_cleanup
from projclust_onnx.passes.pipeline import cleanup
from projclust_onnx.pipeline.config import ProjClustConfig
from projclust_onnx.pipeline.inspection import Inspection, inspect_files
from projclust_onnx.pipeline.model_files import (
    MODEL_SUBDIR,
    companion_files,
    copy_companions,
    copy_hf_companions,
    copy_model_file,
    layout_root,
    load_model,
    model_bytes,
    resolve_onnx_files,
    save_model,
)
from projclust_onnx.pipeline.output_dir import MANIFEST_NAME, clean_leftovers, oserrors_name, staged_directory, temp_dir
from projclust_onnx.pipeline.parity import QUANTIZED_COSINE
from projclust_onnx.pipeline.plan import method_budget, plan_compression
from projclust_onnx.pipeline.report import REPORT_NAME, CompressionReport
from projclust_onnx.pipeline.tasks import EXPORT_TASKS
from projclust_onnx.storage import registry
from projclust_onnx.storage.registry import bits_of, format_of, u_label

logger = logging.getLogger(__name__)

TASKS = EXPORT_TASKS


class ProjClustCompressor:
    """Compresses the word embedding of an ONNX export (every file that reads it); build it with from_pretrained."""

    def __init__(self, onnx_path: Path | list[Path], source: str,
                 export_dir: tempfile.TemporaryDirectory | None = None, root: Path | None = None) -> None:
        self.onnx_paths = [Path(p) for p in onnx_path] if isinstance(onnx_path, (list, tuple)) else [Path(onnx_path)]
        self.source = source
        self._export_dir = export_dir  # keeps an exported model alive as long as the compressor
        self._root = Path(root) if root is not None else None  # a layout folder (model files in its onnx/)

    @property
    def onnx_path(self) -> Path:
        """The first (for most exports the only) model file."""
        return self.onnx_paths[0]

    @classmethod
    def from_pretrained(cls, model_name_or_path: str | Path, file_name: str | None = None,
                        task: str = "feature-extraction", verbose: bool | None = None) -> ProjClustCompressor:
        """From an ONNX file or export directory (every .onnx file in it, unless `file_name` picks one),
        or a Hugging Face model (local directory or hub id), which is exported first with optimum
        (library_name="transformers") for `task`."""
        model_name_or_path = arg.path("model_name_or_path", model_name_or_path)
        file_name = arg.text("file_name", file_name, optional=True)
        task = arg.choice("task", task, TASKS)  # checked for an ONNX model too, where it goes unused
        verbose = arg.flag("verbose", verbose, optional=True)
        path = Path(model_name_or_path).expanduser()
        root = layout_root(path)
        if root is not None:  # sentence-transformers or transformers.js: every file of onnx/, the layout kept
            return cls(resolve_onnx_files(root / MODEL_SUBDIR, file_name), str(model_name_or_path), root=root)
        if path.is_file() or (path.is_dir() and any(path.glob("*.onnx"))):
            return cls(resolve_onnx_files(path, file_name), str(model_name_or_path))
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"{path} holds neither a .onnx file nor a Hugging Face config.json; "
                             "give an ONNX model directory, a Hugging Face model directory or a hub id")
        if not path.exists():
            check_hub_id(str(model_name_or_path))
        clean_leftovers(None)  # export folders of runs killed mid-export
        export_dir = temp_dir("export")
        with Phases(verbose)("export", f"exporting {model_name_or_path} to ONNX with Optimum ({task})"):
            export_onnx(str(model_name_or_path), Path(export_dir.name), task)
        if path.is_dir():  # a hub id's other files stay in the hub cache: only weights were fetched
            copy_hf_companions(path, Path(export_dir.name))
        return cls(resolve_onnx_files(Path(export_dir.name)), str(model_name_or_path), export_dir)

    @property
    def input_paths(self) -> tuple[Path, ...]:
        """What the user gave, where it is a local path (a Hugging Face folder exported into a temporary one)."""
        path = Path(self.source).expanduser()
        return (path,) if os.path.lexists(path) else ()

    @property
    def source_dir(self) -> Path:
        """The model directory the output repeats: the model files' folder, or the top of a layout folder."""
        return self._root or self.onnx_path.parent

    def relative(self, path: Path) -> str:
        """Where a model file goes in the output, relative to its top ('onnx/model.onnx' in a layout folder)."""
        return Path(path).relative_to(self.source_dir).as_posix()

    def inspect(self, config: ProjClustConfig | None = None) -> Inspection:
        """What compress(config) would find and spend in each file (the word table, its heads, the budget
        arithmetic), without fitting or writing anything; `projclust-onnx inspect` prints its rows."""
        return inspect_files(self.onnx_paths, ProjClustConfig.coerce(config))

    def compress(self, save_dir: str | Path, config: ProjClustConfig | None = None, overwrite: bool = False,
                 verbose: bool | None = None, factorization=None) -> CompressionReport:
        """Fit (or choose) the table's new storage, rewrite every file that reads it (lookups, and tied
        heads with the same factors), check each under ONNX Runtime, write save_dir: plan_compression ->
        _fit_tables (per distinct table) -> _rewrite_file (per file) -> _summarise, in a staged directory.

        Files whose tables hold the same values share one fit. `factorization` (an
        EmbeddingFactorization, e.g. fine-tuned factors) skips the fit and is applied as it
        is. Every check that cannot depend on the fit runs first; nothing is written unless
        every check passes; the input is only read. `verbose` (default: when stderr is a
        terminal) reports each phase. `config` may also be a dict of ProjClustConfig's fields
        (ProjClustConfig.from_dict); None means the defaults.
        """
        save_dir = arg.path("save_dir", save_dir)
        config = ProjClustConfig.coerce(config)
        overwrite = arg.flag("overwrite", overwrite)
        verbose = arg.flag("verbose", verbose, optional=True)
        if factorization is not None:
            if not factors_format().holds(factorization):
                raise SettingTypeError("factorization", f"{{}}={literal(repr(factorization))[:80]} must be an "
                                       "EmbeddingFactorization (EmbeddingFactorization.load(path)), or None to fit")
        clean_leftovers(Path(save_dir))  # first, whatever is refused later: dead runs' stages and exports
        phases = Phases(verbose)
        names = ", ".join(self.relative(p) for p in self.onnx_paths)
        with phases("load", f"reading and checking {self.source_dir / names if len(self.onnx_paths) == 1 else names}"):
            plan = plan_compression(self.onnx_paths, self.source_dir, Path(save_dir), config, overwrite=overwrite,
                                    factorization=factorization, inputs=self.input_paths)
            companions = companion_files(self.source_dir, skip={REPORT_NAME, MANIFEST_NAME},
                                         model_dirs=(MODEL_SUBDIR,) if self._root else ())
            measure_quantized_steps(plan, config)
            probe_inputs(plan, config)
        # Read before any rewrite: a rewrite detaches the lookups' inputs.
        tables = {key: files[0].match.dense().astype(np.float32) for key, files in plan.groups().items()}
        with staged_directory(plan.save_dir, overwrite) as stage, oserrors_name(stage):
            results, choice, n_tokens, n_special, prior = self._fit_tables(plan, config, tables, factorization,
                                                                           phases)
            parities, files_report = [], []
            for file in plan.files:
                parity, entry = self._rewrite_file(plan, config, file, results[file.table_key], stage, phases)
                parities.append(parity)
                files_report.append(entry)
            files_report += self._copy_unchanged(plan, stage)
            first = results[plan.first.table_key]
            report = self._summarise(plan, config, first, tables[plan.first.table_key], parities, files_report,
                                     n_tokens, n_special, choice, phases, factorization)
            report.calibration_prior = prior
            report.fidelity = self._fidelity(plan, config, stage, phases)
            saved_config = config if config.target_ratio is not None or \
                config.method in registry.whole_table_methods() else \
                dataclasses.replace(config, quantize=plan.quantize if len({f.quantize for f in plan.files}) == 1
                                    else config.quantize)
            with phases("save", f"writing {plan.save_dir}", announce=False):  # announced with the first file
                copy_companions(companions, stage)
                saved_config.save_pretrained(stage)
                report.file_bytes_after = sum(model_bytes(stage / f["file"]) for f in files_report)
            report.save(stage)
        return report

    def _fit_tables(self, plan, config: ProjClustConfig, tables: dict, factorization, phases):
        """One fit (or choice) per distinct table: (results by table key, the choice, tokens, special tokens, what
        the prior was, None without one)."""
        n, d = plan.shape
        if factorization is not None:
            return {key: factorization for key in plan.groups()}, None, 0, 0, None
        results, choice = {}, None
        with phases("weights", "weighting rows (tokenizer, calibration text, word-frequency prior)"):
            weights, metric, n_tokens, n_special, prior = self._weights(config, n, phases.verbose)
        groups = plan.groups()
        entry = registry.method_format(config.method)
        for key, table32 in tables.items():
            group = groups[key][0]
            if not entry.branches:  # the whole table in the method's own format, sized to the budget
                budget = method_budget(n, d, group.match.stored_bytes, config, plan.itemsize)
                with phases("clustering", f"fitting {entry.plural()} of {n} x {d} rows within {budget:,.0f} bytes"
                                          f"{self._where(plan, group)}"):
                    choice = self._choose(plan, config, table32, weights, metric, phases, budget, (entry,))
                results[key] = choice.result
            elif config.target_ratio is not None:
                with phases("clustering", f"choosing the storage of {n} x {d} rows within 1/"
                                          f"{config.target_ratio:g} of its bytes"):
                    choice = self._choose(plan, config, table32, weights, metric, phases)
                results[key] = choice.result
            else:
                u_text = u_label(group.quantize, config.block_size, group.match.dtype.numpy().name)
                with phases("clustering", f"clustering {n} x {d} rows: {config.method}, "
                                          f"k={config.n_clusters}, j={group.rank}, U {u_text}"
                                          f"{self._where(plan, group)}"):
                    results[key] = fit_factorization(table32, config, group.rank, weights, phases.verbose,
                                                     dtype=group.match.dtype.numpy(), quantize=group.quantize,
                                                     tied=plan.tied)
        return results, choice, n_tokens, n_special, prior

    def _rewrite_file(self, plan, config: ProjClustConfig, file, result, stage: Path, phases):
        """Rewrite one file with `result`, check it against its dense reference, save it into the stage:
        (its parity, its entry in the report's files)."""
        from projclust_onnx.pipeline.parity import check_parity

        where, name = self._where(plan, file), self.relative(file.onnx_path)
        with phases("rewrite", f"rewriting the graph{where}"):
            # The plan's model is rewritten; the reference, loaded again, is bound to its analysis.
            model, reference, dense = file.model, load_model(file.onnx_path), dense_of(result)
            with_cleanup(DensifyEmbeddingPass(dense, config.ids_input, heads=bool(file.heads),
                                              analysis=file.analysis))(reference)
            file_written = rewrite_pass(result, config, tied=plan.tied, analysis=file.analysis)(model).written_bytes
            cleanup()(model)
            if config.max_initializer_bytes is not None:
                split_initializers(model, config.max_initializer_bytes)
        with phases("parity", f"checking the rewritten model under ONNX Runtime{where}"):
            parity = check_parity(model, reference, ids_input=config.ids_input, n_rows=plan.shape[0],
                                  dtype=file.match.dtype, seed=config.seed, workdir=stage,
                                  max_positions=plan.max_positions, lengths=config.check_lengths, image=plan.image,
                                  cosine_bound=file.cosine_bound or QUANTIZED_COSINE)
            del reference
        with phases("save", f"writing {plan.save_dir / name}", announce=file is plan.first):
            out_path = stage / name
            out_path.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, out_path)
            _check_saved(out_path)
        return parity, {
            "file": name, "lookups": len(file.analysis.matches),
            "storage_before": file.match.storage, **_storage_of(result, plan.shape),
            "heads": [h.describe() for h in file.heads], "untied_head": file.untied_head,
            "table_copies": file.table_copies, "embedding_bytes_before": file.stored_bytes,
            "embedding_bytes_after": file_written, "file_bytes_before": file.input_bytes,
            "file_bytes_after": model_bytes(out_path), "parity_max_abs_diff": parity.max_abs_diff,
            "parity_min_cosine": parity.min_cosine, **_largest_initializer(model)}

    def _copy_unchanged(self, plan, stage: Path) -> list[dict]:
        """Files without the word table, copied as they are: their entries in the report's files."""
        paths, entries = {p.name: p for p in self.onnx_paths}, []
        for name, why, _ in plan.skipped:
            out_path = stage / self.relative(paths[name])
            out_path.parent.mkdir(parents=True, exist_ok=True)
            copy_model_file(paths[name], out_path.parent)
            entries.append({"file": self.relative(paths[name]), "copied unchanged": why,
                            "file_bytes_after": model_bytes(out_path)})
        return entries

    def _summarise(self, plan, config: ProjClustConfig, first, table32: np.ndarray, parities, files_report,
                   n_tokens, n_special, choice, phases, factorization) -> CompressionReport:
        """The report of the run, from what the files hold (written bytes per file, parities)."""
        written = sum(f.get("embedding_bytes_after", 0) for f in files_report)
        error = weighted_error(table32, dense_of(first), None) if table32.any() else None
        report = self._report(plan, config, first, parities, written, error, n_tokens, n_special, choice,
                              phases.timings)
        if error is None:
            report.relative_error_reason = "the table is all zeros: ||E||^2 = 0 leaves the ratio undefined"
        if config.rank is None and config.target_ratio is None and factorization is None:
            report.compression_asked = config.compression
            # Per file, of that file's stored table: an int8 variant counts against its own int8 bytes.
            report.compression_realised = 1 - float(np.mean([f["embedding_bytes_after"] / p.match.stored_bytes
                                                             for f, p in zip(files_report, plan.files)]))
            if report.undersize_notice():
                logger.warning("projclust-onnx: notice: %s", report.undersize_notice())
        report.files = files_report
        return report

    def _where(self, plan, file) -> str:
        """' (file name)' in phase messages when there are several files."""
        return f" ({self.relative(file.onnx_path)})" if len(plan.files) > 1 else ""

    def _weights(self, config: ProjClustConfig, n: int, progress: bool = False):
        """(sample weights for the fit, calibration weights for the chooser's score, tokens, special tokens, the
        word-frequency prior's description or None); `progress` shows a bar while the calibration text is
        tokenized."""
        from projclust_onnx.core.calibration import calibration_weights, prior_of, sample_weights

        wants_tokenizer = config.uses_calibration or config.special_token_weight > 0 or \
            config.calibration_prior != "none"
        tokenizer = self._tokenizer(required=config.uses_calibration) if wants_tokenizer else None
        weights, n_tokens, n_special = sample_weights(config, n, tokenizer, progress)
        metric, _ = calibration_weights(config, n, tokenizer)
        prior = prior_of(config, n, tokenizer)
        return weights, metric, n_tokens, n_special, prior.describe() if prior is not None else None

    @staticmethod
    def _choose(plan, config: ProjClustConfig, table32: np.ndarray, weights, metric, phases, budget=None,
                formats=None):
        from projclust_onnx.core.chooser import choose

        def fit(k: int, rank: int):
            return estimator_for(dataclasses.replace(config, n_clusters=k, method=factors_format()(k).method),
                                 rank, verbose=phases.verbose).fit(table32, sample_weight=weights)

        def say(text: str) -> None:
            if phases.verbose:
                print(f"  {text}", file=sys.stderr, flush=True)

        n, d = plan.shape
        budget = n * d * plan.itemsize / config.target_ratio if budget is None else budget
        return choose(table32, budget, metric, fit=fit, sample_weight=weights, table_itemsize=plan.itemsize,
                      progress=say, verbose=phases.verbose, device=config.device, seed=config.seed, tied=plan.tied,
                      formats=formats)

    def _report(self, plan, config, result, parities, written: int, relative_error: float | None, n_tokens, n_special,
                choice, timings) -> CompressionReport:
        n, d = plan.shape
        storage = format_of(result)
        heads = [f"{self.relative(f.onnx_path)}: {h.describe()}" if len(plan.files) > 1 else h.describe()
                 for f in plan.files for h in f.heads]
        return CompressionReport(
            source=self.source, output=str(plan.save_dir), **storage.report_fields(result, n, d),
            layout="grouped (tied head)" if plan.tied and storage.branches else config.layout,
            table=str(plan.match.table.name), n_rows=n, dim=d, dtype=str(plan.match.table_dtype.numpy()),
            embedding_params_before=n * d, embedding_bytes_before=plan.stored_bytes,
            embedding_bytes_after=written, file_bytes_before=plan.input_bytes, file_bytes_after=0,
            relative_error=relative_error,
            parity_max_abs_diff=max(p.max_abs_diff for p in parities), parity_tolerance=parities[0].tolerance,
            storage_before=plan.match.storage, lookup_form=storage.lookup_form(config.lookup_form, plan.tied),
            calibration_tokens=n_tokens,
            special_tokens=n_special, choice=choice.to_dict() if choice is not None else None,
            untied_head=plan.untied_head, heads=heads, table_copies=sum(f.table_copies for f in plan.files),
            timings=timings)

    def _fidelity(self, plan, config: ProjClustConfig, stage: Path, phases) -> dict | None:
        """How far the first rewritten file's outputs moved (pipeline/fidelity.py), as the report keeps it; None
        where the model has no tokenizer to make its inputs from text."""
        from projclust_onnx.pipeline.fidelity import Fidelity, measure_fidelity, sample_texts
        from projclust_onnx.pipeline.model_files import first_line

        if not any((self.source_dir / name).is_file() for name in TOKENIZER_FILES):
            return None
        texts, source = sample_texts(config)
        file = plan.files[0]
        with phases("fidelity", f"measuring the output fidelity on {len(texts)} texts"):
            tokenizer = self._tokenizer(required=False)
            if tokenizer is None:
                return None
            try:
                found = measure_fidelity(file.onnx_path, stage / self.relative(file.onnx_path), tokenizer, texts,
                                         source)
            except Exception as err:  # a measurement, not a check: it never fails a model that passed them
                found = Fidelity(None, None, 0, source, f"the model could not be run on text ({first_line(err)})")
        return dataclasses.asdict(found)

    def _tokenizer(self, required: bool):
        """The model directory's tokenizer; None (with a warning) when absent and not required. A directory
        without any tokenizer file is known to have none before transformers is imported (seconds)."""
        try:
            if not any((self.source_dir / name).is_file() for name in TOKENIZER_FILES):
                raise FileNotFoundError(f"none of {', '.join(TOKENIZER_FILES)} is there")
            from transformers import AutoTokenizer

            with quiet_third_party():
                return AutoTokenizer.from_pretrained(self.source_dir)
        except Exception as err:
            if required:
                raise ValueError(f"calibration needs the model's tokenizer, but {self.source_dir} has none "
                                 f"loadable ({err}); copy the tokenizer files beside the model") from err
            logger.warning("no tokenizer in %s: special tokens are weighted like any row", self.source_dir)
            return None


# Files a transformers tokenizer is loaded from (fast, sentencepiece, WordPiece and BPE vocabularies).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model", "spm.model")


def factors_format():
    """The registered format of the factors (the default method's: projclust, svd for k = 1)."""
    return registry.method_format(registry.default_method())


def estimator_options(config: ProjClustConfig, verbose: bool = False) -> dict:
    """ProjectiveClustering's settings from a config, but k and rank: the one place settings meet the estimator."""
    return dict(init=config.init, n_init=config.n_init, anneal_steps=config.anneal_steps, max_iter=config.max_iter,
                tol=config.tol, z=config.z, device=config.device, random_state=config.seed, verbose=verbose)


def estimator_for(config: ProjClustConfig, rank: int, verbose: bool = False):
    """The ProjectiveClustering a config describes."""
    from projclust_onnx.storage.clustering import ProjectiveClustering

    return ProjectiveClustering(config.n_clusters, rank, **estimator_options(config, verbose))


def fit_factorization(table: np.ndarray, config: ProjClustConfig, rank: int, sample_weight=None,
                      verbose: bool = False, dtype=np.float32, quantize: str = registry.FLOAT_U, tied: bool = False):
    """Cluster `table` as `config` says and factorize it, U quantized as `quantize` says (decoded in the
    model's dtype when `tied`: a tied head reads U through MatMulNBits): the factors' format's encode."""
    storage = factors_format()(config.n_clusters, rank, registry.factor_storage(quantize, config.block_size),
                               estimator=estimator_options(config, verbose), dtype=dtype,
                               compute_dtype=dtype if tied else None)
    return storage.encode(table, sample_weight)


def probe_inputs(plan, config: ProjClustConfig) -> None:
    """parity.probe_image_inputs for every file: image inputs the check cannot feed are refused before the fit."""
    from projclust_onnx.pipeline.parity import image_inputs, probe_image_inputs

    for file in plan.files:
        if not image_inputs(file.model):  # a text model's inputs are the check's own: no session loaded for nothing
            continue
        try:
            probe_image_inputs(file.onnx_path, ids_input=config.ids_input, n_rows=plan.shape[0],
                               max_positions=plan.max_positions, lengths=config.check_lengths, image=plan.image,
                               seed=config.seed)
        except ValueError as err:
            raise type(err)(f"{file.onnx_path.name}: {err}" if len(plan.files) > 1 else str(err)) from None


def measure_quantized_steps(plan, config: ProjClustConfig) -> None:
    """For each file that quantizes its activations, the numeric check's cheap part before the fit: how far
    its outputs step under rounding-sized noise and under a rewrite with cheap factors (one SVD, rows dealt
    to the clusters in turn), which sets the file's cosine bound; ParityError (naming the file) when the
    steps leave no usable bound, or the cheap rewrite fails the exact check before the quantized nodes."""
    import onnx_ir as ir

    from projclust_onnx.pipeline.parity import check_parity, quantized_activations, reference_step, step_bound

    for file in plan.files:
        if not quantized_activations(file.model):
            continue
        table = file.match.dense().astype(np.float32)
        kwargs = dict(ids_input=config.ids_input, seed=config.seed, max_positions=plan.max_positions,
                      lengths=config.check_lengths, image=plan.image)
        try:
            noise = reference_step(file.model, table, heads=bool(file.heads), analysis=file.analysis, **kwargs)
            cheap = cheap_factorization(table, config, file, tied=plan.tied)
            model, reference = (ir.from_proto(ir.to_proto(file.model)) for _ in range(2))  # bound by position
            with_cleanup(DensifyEmbeddingPass(dense_of(cheap), config.ids_input, heads=bool(file.heads),
                                              analysis=file.analysis))(reference)
            with_cleanup(rewrite_pass(cheap, config, tied=plan.tied, analysis=file.analysis))(model)
            fit = check_parity(model, reference, n_rows=len(table), dtype=file.match.dtype, cosine_bound=-1.0,
                               **kwargs)
            file.cosine_bound = step_bound(noise, 1.0 - fit.min_cosine)
        except ValueError as err:
            raise type(err)(f"{file.onnx_path.name}: {err}" if len(plan.files) > 1 else str(err)) from None


def cheap_factorization(table: np.ndarray, config: ProjClustConfig, file, tied: bool = False):
    """Factors of the planned shape and storage without clustering: the table's top right singular vectors
    as every branch, rows dealt to the k clusters in turn."""
    from projclust_onnx.storage.factorization import EmbeddingFactorization

    n, d = table.shape
    quantized = bits_of(file.quantize) is not None
    rank = file.rank or (config.block_size if quantized else max(1, d // 2))
    basis = np.linalg.svd(table, full_matrices=False)[2][:rank].T  # (d, j)
    dtype = file.match.dtype.numpy()
    k = min(config.n_clusters, n)
    result = EmbeddingFactorization(labels=np.arange(n) % k, U=(table @ basis).astype(dtype),
                                    V=np.repeat(basis.T[None], k, axis=0).astype(dtype))
    if quantized:
        result = result.quantized(bits_of(file.quantize), config.block_size, table,
                                  compute_dtype=dtype if tied else None)
    return result


def dense_of(result) -> np.ndarray:
    """The dense table a stored table (factors included) stands for."""
    return format_of(result).decode(result)


def rewrite_pass(result, config: ProjClustConfig, tied: bool = False, analysis=None):
    """The pass that writes `result` into the graph: the k-branch factors, or plain quantized storage (codebooks
    included), and with either the tied heads when `tied`. `analysis`: the file's WordTableAnalysis (the plan's)."""
    from projclust_onnx.passes import FactorizeEmbeddingPass, QuantizeEmbeddingPass

    if format_of(result).branches:  # k branches, written by the factor passes
        if tied:
            return FactorizeEmbeddingPass(result, config.layout, config.ids_input, tied=True, analysis=analysis)
        return FactorizeEmbeddingPass(result, config.layout, config.ids_input, config.lookup_form, analysis=analysis)
    return QuantizeEmbeddingPass(result, config.ids_input, config.lookup_form, analysis=analysis, tied=tied)


def split_initializers(model, max_bytes: int) -> None:
    """SplitInitializersPass with its cleanup; its refusal (a reader that cannot read blocks) as one ValueError."""
    import onnx_ir as ir

    try:
        with_cleanup(SplitInitializersPass(max_bytes))(model)
    except ir.passes.PassError as err:
        cause = err
        while cause.__cause__ is not None and isinstance(cause, ir.passes.PassError):
            cause = cause.__cause__
        raise SettingError("max_initializer_bytes", f"{{}}: {cause}") from None


def _storage_of(result, shape: tuple[int, int]) -> dict:
    """The rank and U storage of a factorization, or the format of a table stored whole (rank None)."""
    fields = format_of(result).report_fields(result, *shape)
    return {"rank": fields["rank"], "quantize": fields["quantize"]}


def _largest_initializer(model) -> dict:
    """The largest initializer's name and bytes: what a runtime with a per-buffer limit (WebGPU) must hold in one."""
    name, value = max(((n, v) for n, v in model.graph.initializers.items() if v.const_value is not None),
                      key=lambda item: item[1].const_value.nbytes, default=(None, None))
    return {"largest_initializer": name, "largest_initializer_bytes": value.const_value.nbytes if value else 0}


def _check_saved(path: Path) -> None:
    """onnx.checker on the written file (by path, so external data over 2 GB works)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ValueError(f"the rewritten model fails onnx.checker ({err}); nothing was written") from err


def check_hub_id(name: str) -> None:
    """ValueError for a name that is neither an existing path nor a reachable hub model id."""
    import os

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_local = name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or name.endswith(".onnx")
    try:
        validate_repo_id(name)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise ValueError(f"{name} does not exist; give an ONNX model directory or file, a Hugging Face model "
                         "directory, or a hub id such as sentence-transformers/all-MiniLM-L6-v2")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(f"{name} is not a local path, and HF_HUB_OFFLINE is set and the hub cache does not hold "
                             "it; download it first or give a local model directory")


def export_onnx(model_name_or_path: str, output: Path, task: str = "feature-extraction") -> None:
    """Export a Hugging Face model to ONNX with optimum, as `optimum-cli export onnx` would."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} must be one of {TASKS}")
    from optimum.exporters.onnx import main_export

    try:
        # library_name="transformers": with sentence-transformers installed the exporter
        # would otherwise pick its pooled graph for a sentence-transformers checkpoint.
        with quiet_third_party():
            main_export(model_name_or_path, output=output, task=task, library_name="transformers")
    except Exception as err:
        raise ValueError(f"could not export {model_name_or_path!r} to ONNX for task={task!r}: {err}") from err


@contextlib.contextmanager
def quiet_third_party():
    """Silence what the export prints that a user cannot act on: the tracer's warnings,
    deprecations inside transformers, and the advice to install accelerate."""
    import warnings

    loggers = [logging.getLogger(name) for name in ("transformers", "optimum", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*Tracer.*")
        warnings.filterwarnings("ignore", message=".*[Aa]ccelerate.*")
        try:
            from torch.jit import TracerWarning

            warnings.filterwarnings("ignore", category=TracerWarning)
        except ImportError:
            pass
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
