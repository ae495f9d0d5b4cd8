"""ProjClustCompressor: the Optimum-style front door.

    compressor = ProjClustCompressor.from_pretrained("path/to/onnx-or-hf-model")
    report = compressor.compress("out/", ProjClustConfig(compression=0.4, n_clusters=5))

The output directory is a complete model directory (model.onnx, config.json,
tokenizer files, projclust_config.json, projclust_report.json) that Optimum's
ORTModel classes and a plain onnxruntime.InferenceSession load as they are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from projclust_onnx.config import ProjClustConfig
from projclust_onnx.model_files import copy_companions, load_model, model_bytes, resolve_onnx_file, save_model
from projclust_onnx.output_dir import check_room, staged_directory
from projclust_onnx.plan import plan_compression
from projclust_onnx.progress import Phases

logger = logging.getLogger(__name__)

REPORT_NAME = "projclust_report.json"
TASKS = ("feature-extraction", "text-classification")


@dataclass
class CompressionReport:
    """What one compression did; saved as projclust_report.json beside the model."""

    source: str
    output: str
    method: str
    n_clusters: int
    rank: int
    layout: str
    table: str
    n_rows: int
    dim: int
    dtype: str
    embedding_params_before: int
    embedding_params_after: int
    cluster_id_bytes: int
    embedding_bytes_before: int
    embedding_bytes_after: int
    file_bytes_before: int
    file_bytes_after: int
    relative_error: float
    parity_max_abs_diff: float
    parity_tolerance: float
    calibration_tokens: int = 0
    special_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def embedding_compression(self) -> float:
        """Fraction of embedding parameters removed (cluster ids aside)."""
        return 1.0 - self.embedding_params_after / self.embedding_params_before

    def to_dict(self) -> dict:
        return {**asdict(self), "embedding_compression": self.embedding_compression}

    def save(self, directory: Path) -> Path:
        path = Path(directory) / REPORT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def summary_rows(self) -> list[tuple[str, str]]:
        mib = 2**20
        return [
            ("model", self.source),
            ("output", self.output),
            ("method", f"{self.method}, k={self.n_clusters}, j={self.rank}, layout={self.layout}"),
            ("embedding table", f"{self.table} ({self.n_rows} x {self.dim}, {self.dtype})"),
            ("embedding parameters", f"{self.embedding_params_before:,} -> {self.embedding_params_after:,} "
                                     f"({self.embedding_compression:.1%} fewer; ids {self.cluster_id_bytes:,} B)"),
            ("model file", f"{self.file_bytes_before / mib:.1f} MiB -> {self.file_bytes_after / mib:.1f} MiB"),
            ("relative error", f"{self.relative_error:.4f}  (||E - E'||^2 / ||E||^2)"),
            ("parity (max abs diff)", f"{self.parity_max_abs_diff:.2e} <= {self.parity_tolerance:g}"),
            ("calibration tokens", f"{self.calibration_tokens:,}" if self.calibration_tokens else "none (unweighted)"),
            ("special tokens", f"{self.special_tokens} fitted (nearly) exactly" if self.special_tokens else "none"),
            ("time", ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())),
        ]


class ProjClustCompressor:
    """Compresses the word embedding of one ONNX model; build it with from_pretrained."""

    def __init__(self, onnx_path: Path, source: str, export_dir: tempfile.TemporaryDirectory | None = None) -> None:
        self.onnx_path = Path(onnx_path)
        self.source = source
        self._export_dir = export_dir  # keeps an exported model alive as long as the compressor

    @classmethod
    def from_pretrained(cls, model_name_or_path: str | Path, file_name: str | None = None,
                        task: str = "feature-extraction", verbose: bool | None = None) -> ProjClustCompressor:
        """From an ONNX file or model directory, or a Hugging Face model (local directory or hub id),
        which is exported first with optimum (library_name="transformers") for `task`."""
        path = Path(model_name_or_path).expanduser()
        if path.is_file() or (path.is_dir() and any(path.glob("*.onnx"))):
            return cls(resolve_onnx_file(path, file_name), str(model_name_or_path))
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"{path} holds neither a .onnx file nor a Hugging Face config.json; "
                             "give an ONNX model directory, a Hugging Face model directory or a hub id")
        if not path.exists():
            check_hub_id(str(model_name_or_path))
        export_dir = tempfile.TemporaryDirectory(prefix="projclust-export-")
        with Phases(verbose)("export", f"exporting {model_name_or_path} to ONNX with Optimum ({task})"):
            export_onnx(str(model_name_or_path), Path(export_dir.name), task)
        return cls(resolve_onnx_file(Path(export_dir.name)), str(model_name_or_path), export_dir)

    @property
    def source_dir(self) -> Path:
        return self.onnx_path.parent

    def compress(self, save_dir: str | Path, config: ProjClustConfig | None = None, overwrite: bool = False,
                 verbose: bool | None = None, factorization=None) -> CompressionReport:
        """Cluster the table, rewrite the graph, check it under ONNX Runtime, then write save_dir.

        `factorization` (an EmbeddingFactorization, e.g. fine-tuned factors) skips the
        clustering and is applied as it is. Every check that cannot depend on the fit
        runs first; nothing is written unless every check passes; the input is only
        read. `verbose` (default: when stderr is a terminal) reports each phase.
        """
        from projclust_onnx.parity import check_parity
        from projclust_onnx.passes import factorize_embedding_pipeline, find_word_embedding

        config = config or ProjClustConfig()
        phases = Phases(verbose)
        with phases("load", f"reading and checking {self.onnx_path}"):
            plan = plan_compression(self.onnx_path, self.source_dir, Path(save_dir), config, overwrite=overwrite,
                                    factorization=factorization)
        n, d = plan.shape
        table = plan.table
        table32 = table.astype(np.float32)
        n_tokens = n_special = 0
        with staged_directory(plan.save_dir, overwrite) as stage:
            # Room for the parity check's two models (the reference is as large as the input),
            # which are gone before the smaller output is written.
            check_room(stage, 2 * plan.input_bytes)
            if factorization is None:
                from projclust_onnx.calibration import sample_weights

                with phases("weights", "weighting rows (tokenizer, calibration text)"):
                    wants_tokenizer = config.uses_calibration or config.special_token_weight > 0
                    tokenizer = self._tokenizer(required=config.uses_calibration) if wants_tokenizer else None
                    weights, n_tokens, n_special = sample_weights(config, n, tokenizer)
                with phases("clustering", f"clustering {n} x {d} rows: {config.method}, k={config.n_clusters}, "
                                          f"j={plan.rank}"):
                    factorization = fit_factorization(table32, config, plan.rank, weights, phases.verbose,
                                                      dtype=table.dtype)

            with phases("rewrite", "rewriting the graph"):
                model = plan.model
                reference = load_model(self.onnx_path)
                dense = factorization.reconstruct().astype(table.dtype)
                ref_table = find_word_embedding(reference.graph, config.ids_input).table
                ref_table.const_value = ir.tensor(dense, name=ref_table.name)
                factorize_embedding_pipeline(factorization, config.layout, config.ids_input)(model)

            with phases("parity", "checking the rewritten model under ONNX Runtime"):
                parity = check_parity(model, reference, ids_input=config.ids_input, n_rows=n, dtype=plan.match.dtype,
                                      seed=config.seed, workdir=stage)
                del reference

            report = CompressionReport(
                source=self.source, output=str(plan.save_dir), method=config.method, n_clusters=config.n_clusters,
                rank=plan.rank, layout=config.layout, table=str(plan.match.table.name), n_rows=n, dim=d,
                dtype=str(table.dtype), embedding_params_before=n * d,
                embedding_params_after=factorization.n_params,
                cluster_id_bytes=factorization.nbytes - factorization.U.nbytes - factorization.V.nbytes,
                embedding_bytes_before=table.nbytes, embedding_bytes_after=factorization.nbytes,
                file_bytes_before=plan.input_bytes, file_bytes_after=0,
                relative_error=factorization.relative_error(table32),
                parity_max_abs_diff=parity.max_abs_diff, parity_tolerance=parity.tolerance,
                calibration_tokens=n_tokens, special_tokens=n_special, timings=phases.timings)
            with phases("save", f"writing {plan.save_dir}"):
                out_path = stage / self.onnx_path.name
                save_model(model, out_path)
                _check_saved(out_path)
                copy_companions(self.source_dir, stage, skip={REPORT_NAME})
                config.save_pretrained(stage)
                report.file_bytes_after = model_bytes(out_path)
            report.save(stage)
        return report

    def _tokenizer(self, required: bool):
        """The model directory's tokenizer; None (with a warning) when absent and not required."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.source_dir)
        except Exception as err:
            if required:
                raise ValueError(f"calibration needs the model's tokenizer, but {self.source_dir} has none "
                                 f"loadable ({err}); copy the tokenizer files beside the model") from err
            logger.warning("no tokenizer in %s: special tokens are weighted like any row", self.source_dir)
            return None


def fit_factorization(table: np.ndarray, config: ProjClustConfig, rank: int, sample_weight=None,
                      verbose: bool = False, dtype=np.float32):
    """Cluster `table` as `config` says and factorize it: the one place settings meet the estimator."""
    from projclust_onnx.clustering import ProjectiveClustering
    from projclust_onnx.factorization import EmbeddingFactorization

    table32 = np.asarray(table, dtype=np.float32)
    estimator = ProjectiveClustering(
        config.n_clusters, rank, init=config.init, n_init=config.n_init, anneal_steps=config.anneal_steps,
        max_iter=config.max_iter, tol=config.tol, z=config.z, device=config.device,
        random_state=config.seed, verbose=verbose).fit(table32, sample_weight=sample_weight)
    return EmbeddingFactorization.from_estimator(estimator, table32, dtype=dtype)


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
