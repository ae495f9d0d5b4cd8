"""CompressionReport: what one compression did, measured on what was written."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from projclust_onnx.storage.base import PLAIN
from projclust_onnx.storage.registry import FLOAT_LABEL, FLOAT_U, format_class, method_format, u_label

REPORT_NAME = "projclust_report.json"
# A table this many times smaller than the compression asked for is worth a notice.
UNDERSIZE = 1.5


@dataclass
class CompressionReport:
    """Saved as projclust_report.json beside the model.

    embedding_bytes_before/after are the bytes of the initializers the lookup read before
    and the rewrite wrote after, as stored in the file; file_bytes_* are the files' sizes.
    method is "projclust", "svd" or "quantize" (plain quantization of the table, no factors).
    The JSON is strict: a value that is not a finite number is written as null, with a
    `<name>_reason` beside it saying why.
    """

    source: str
    output: str
    method: str
    n_clusters: int | None
    rank: int | None
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
    relative_error: float | None
    parity_max_abs_diff: float
    parity_tolerance: float
    storage_before: str = FLOAT_LABEL
    quantize: str = FLOAT_U
    block_size: int | None = None
    storage: str | None = None  # the table's (or U's) storage label, e.g. "int4 block 32", "codebook 79 x 8-bit"
    lookup_form: str | None = None
    calibration_tokens: int = 0
    calibration_prior: str | None = None  # the broad prior that weighted the rows (core/prior.py), if any
    special_tokens: int = 0
    choice: dict | None = None
    untied_head: str | None = None
    heads: list[str] = field(default_factory=list)  # tied LM heads rewritten (with the factors, or the decoded table)
    table_copies: int = 1  # dense copies of the table the input files held (lookups' tables, heads' copies)
    files: list[dict] = field(default_factory=list)  # per model file: what was rewritten, bytes, parity
    timings: dict[str, float] = field(default_factory=dict)
    relative_error_reason: str | None = None  # why relative_error is null
    compression_asked: float | None = None  # the config's compression, when it set the budget
    compression_realised: float | None = None  # fraction of one stored table's bytes removed, per file written
    # how far the written model's outputs moved (pipeline/fidelity.Fidelity as a dict): mean and least cosine of
    # each text's output to the original's, the number of texts and where they came from; or why not measured
    fidelity: dict | None = None

    @property
    def embedding_compression(self) -> float:
        """Fraction of embedding parameters removed (cluster ids aside)."""
        return 1.0 - self.embedding_params_after / self.embedding_params_before

    @property
    def embedding_ratio(self) -> float:
        """The float table's bytes (times the copies the files held) over the embedding bytes written."""
        return self.table_copies * self.n_rows * self.dim * _itemsize(self.dtype) / self.embedding_bytes_after

    def undersize_notice(self) -> str | None:
        """Why the table came out much smaller than `compression_asked` says, or None when it did not."""
        if self.compression_asked is None or self.compression_realised is None or \
                (1 - self.compression_realised) * UNDERSIZE >= 1 - self.compression_asked:
            return None
        if self.quantize != FLOAT_U and self.rank is not None:
            why = (f"{self.quantize} factors take ranks in multiples of the block size {self.block_size} below "
                   f"d={self.dim}, and rank {self.rank} was the largest that fit")
        else:
            why = f"rank {self.rank} was the largest the storage allows within the budget"
        return (f"the embedding is {1 / (1 - self.compression_realised):.1f}x smaller than stored "
                f"({self.compression_realised:.0%} fewer bytes), not the {self.compression_asked:.0%} asked for: "
                f"{why}; a smaller block size or float factors fill the budget more closely")

    def to_dict(self) -> dict:
        """The report as strict JSON values: null (with a reason) where a number is not finite."""
        return strict_json({**asdict(self), "embedding_compression": self.embedding_compression,
                            "embedding_ratio": self.embedding_ratio})

    def save(self, directory: Path) -> Path:
        path = Path(directory) / REPORT_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    def summary_rows(self) -> list[tuple[str, str]]:
        mib = 2**20
        method = (format_class(self.quantize) if self.method == PLAIN else method_format(self.method)) \
            .summary_method(self)
        rows = [
            ("model", self.source),
            ("output", self.output),
            ("method", method),
            ("embedding table",
             f"{self.table} ({self.n_rows} x {self.dim}, {self.dtype}, stored {self.storage_before})"),
            ("embedding bytes", f"{self.embedding_bytes_before:,} -> {self.embedding_bytes_after:,} " + (
                f"({self.embedding_bytes_before / self.embedding_bytes_after:.2f}x smaller than stored; the files "
                "store the table differently, each is compressed within its own bytes: see below)"
                if self.mixed_storage else
                f"({self.embedding_ratio:.2f}x smaller than the {self.dtype} table" +
                (f"'s {self.table_copies} copies)" if self.table_copies > 1 else ")"))),
            *([("compression", f"asked {self.compression_asked:.0%}, realised {self.compression_realised:.0%} of the "
                               "stored table's bytes")] if self.compression_asked is not None else []),
            # Parameters mean something for factors (n*j + k*j*d against n*d), not for codes into codebooks.
            *([("embedding parameters", f"{self.embedding_params_before:,} -> {self.embedding_params_after:,} "
                                        f"({self.embedding_compression:.1%} fewer" +
                                        (f"; cluster ids {self.cluster_id_bytes:,} bytes)" if self.cluster_id_bytes
                                         else ")"))] if self.method != PLAIN else []),
            ("model file", f"{self.file_bytes_before / mib:.1f} MiB -> {self.file_bytes_after / mib:.1f} MiB"),
            ("relative error", f"{self.relative_error:.4f}  (||E - E'||^2 / ||E||^2)" if self.relative_error is not None
             else f"undefined: {self.relative_error_reason}"),
            ("parity (max abs diff)", f"{self.parity_max_abs_diff:.2e} <= {self.parity_tolerance:g}"),
            *([("output fidelity", _fidelity_text(self.fidelity))] if self.fidelity is not None else []),
            ("calibration tokens", f"{self.calibration_tokens:,}" if self.calibration_tokens else
             "none" + ("" if self.calibration_prior else " (unweighted)")),
            *([("prior", self.calibration_prior + (" (blended into the text's counts)" if self.calibration_tokens
                                                    else ""))] if self.calibration_prior else []),
            ("special tokens", f"{self.special_tokens} fitted (nearly) exactly" if self.special_tokens else "none"),
        ]
        if self.choice:
            rows.append(("chosen", self.choice["reason"]))
        if self.heads and self.method == PLAIN:
            rows.append(("LM head", f"reads the table the {self.storage_after} decode to (still tied: the files store "
                                    "it once, encoded); ONNX Runtime folds that decode when a session starts, so "
                                    f"session memory holds the decoded {self.n_rows} x {self.dim} {self.dtype} table "
                                    f"({self.n_rows * self.dim * _itemsize(self.dtype) / mib:.1f} MiB) beside the "
                                    "encoded one, and peaks at several times that while folding: the file is "
                                    "smaller, the session is not (factors keep a head small in the session): "
                                    + "; ".join(self.heads)))
        elif self.heads:
            rows.append(("LM head", "rewritten with the same factors (still tied): " + "; ".join(self.heads)))
        largest = max(self.files, key=lambda f: f.get("largest_initializer_bytes", 0), default=None)
        if largest and largest.get("largest_initializer"):
            rows.append(("largest initializer", f"{largest['largest_initializer']} "
                                                f"({largest['largest_initializer_bytes'] / mib:.2f} MiB" +
                         (f", in {largest['file']})" if len(self.files) > 1 else ")")))
        if len(self.files) > 1:
            for f in self.files:
                what = f"copied unchanged ({f['copied unchanged']})" if "copied unchanged" in f else \
                    f"{f['file_bytes_before'] / mib:.2f} MiB -> {f['file_bytes_after'] / mib:.2f} MiB" + \
                    (f", {len(f['heads'])} head(s) rewritten" if f["heads"] else "") + \
                    (f"; table stored {f['storage_before']}: {f['embedding_bytes_before']:,} -> "
                     f"{f['embedding_bytes_after']:,} bytes, j={f['rank']}, U {f['quantize']}"
                     if self.mixed_storage else "")
                rows.append(("file " + f["file"], what))
        if self.untied_head:
            rows.append(("LM head", f"kept dense ({self.untied_head}): the model is now UNTIED, input and output "
                                    "embeddings differ"))
        rows.append(("time", ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())))
        return rows

    @property
    def mixed_storage(self) -> bool:
        """Whether the files stored the table differently (a float model beside its int8 variant)."""
        return len({f["storage_before"] for f in self.files if "storage_before" in f}) > 1

    @property
    def storage_after(self) -> str:
        return self.storage or u_label(self.quantize, self.block_size, self.dtype)


def _fidelity_text(fidelity: dict) -> str:
    if fidelity.get("mean_cosine") is None:
        return f"not measured: {fidelity.get('reason')}"
    return (f"mean cosine {fidelity['mean_cosine']:.4f} (least {fidelity['min_cosine']:.4f}) to the original's "
            f"outputs on {fidelity['texts']} texts: {fidelity['source']}")


def strict_json(value):
    """`value` (dicts, lists, numbers) with every NaN or infinity replaced by None and, in a dict, a
    `<key>_reason` beside it (unless one is given), so that strict JSON parsers read the file."""
    if isinstance(value, dict):
        out = {key: strict_json(item) for key, item in value.items()}
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item) and out.get(f"{key}_reason") is None:
                out[f"{key}_reason"] = f"the value was {item}, which JSON cannot hold"
        return out
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize
