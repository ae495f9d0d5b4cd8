"""The plan of one compression: every check that cannot depend on the fit, done before it.

A fit takes seconds to minutes; a refusal found after it wastes them. So the model is
read and checked (onnx.checker, opset), the lookup found and checked (untied), the
parity check's feeds and the budget worked out, and the output directory checked,
all before anything is clustered or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from projclust_onnx.config import ProjClustConfig
from projclust_onnx.errors import SettingError, literal
from projclust_onnx.model_files import load_model, model_bytes
from projclust_onnx.output_dir import check_output_dir


@dataclass
class CompressionPlan:
    """What will be compressed and where: the loaded model, its lookup, the rank."""

    onnx_path: Path
    save_dir: Path
    model: ir.Model
    match: object  # passes.EmbeddingMatch
    rank: int | None  # None when the chooser picks it (target_ratio)
    quantize: str  # how U is stored: the config's choice, else as the input table was stored
    input_bytes: int
    stored_bytes: int  # bytes of the initializers the lookup reads (codes, scales, zero points)
    untied_head: str | None = None  # the dense head's copy of the table, left as it was (head="keep")

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


def plan_compression(onnx_path: Path, source_dir: Path, save_dir: Path, config: ProjClustConfig, *,
                     overwrite: bool = False, factorization=None) -> CompressionPlan:
    """Check the output, the model, the lookup and the budget; raise ValueError naming the first problem."""
    from projclust_onnx.parity import check_feedable
    from projclust_onnx.passes import check_opset, find_word_embedding

    save_dir = check_output_dir(save_dir, overwrite, [onnx_path, source_dir])
    model = load_model(onnx_path)
    try:
        check_opset(model)
    except ir.passes.PreconditionError as err:
        raise ValueError(str(err)) from err
    match = find_word_embedding(model.graph, config.ids_input)
    match.check_untied()
    head = match.transposed_copies(model.graph)
    if head and config.head != "keep":
        readers = literal(", ".join(f"{n.op_type} {n.name!r}" for _, nodes in head for n in nodes) or "no node")
        raise SettingError("head", f"the table's transpose is also stored as {literal(repr(head[0][0].name))}, read "
                           f"by {readers}: a tied LM head exported as its own copy. Rewriting the head with the "
                           "same factors is not supported yet; pass {} to compress the lookup only (the model "
                           "becomes untied, and the head stays dense)")
    check_feedable(model, config.ids_input)
    n, d = match.shape
    if config.n_clusters > n:
        raise SettingError("n_clusters", f"{{}}={config.n_clusters} must be <= the table's {n} rows")
    quantize = config.quantize or {None: "none", 8: "int8", 4: "int4"}[match.bits]
    itemsize = match.dtype.numpy().itemsize
    if config.target_ratio is not None:
        rank = None
    elif factorization is None:
        rank = config.rank_for(n, d, itemsize, quantize, match.stored_bytes)
    elif (factorization.n_rows, factorization.dim) != (n, d):
        raise ValueError(f"the factorization is {factorization.n_rows} x {factorization.dim} but the table "
                         f"is {n} x {d}")
    else:
        rank = factorization.rank
    return CompressionPlan(onnx_path, save_dir, model, match, rank, quantize, model_bytes(onnx_path),
                           match.stored_bytes, head[0][0].name if head else None)
