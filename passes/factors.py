"""The factors of a tied table as initializers, shared by its lookups and its heads.

U is stored per cluster (`U/cluster{c}`: the rows of cluster c, float, or quantized codes,
scales and zero points as MatMulNBits reads them) and V per branch (`branch{c}/V`). The
cluster-order maps (`ClusterOrder`) lead from a token id to its row there and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.builder import Builder, branch_weights

from projclust_onnx.storage.quantization import BlockQuantized

if TYPE_CHECKING:
    from projclust_onnx.storage.factorization import EmbeddingFactorization

__all__ = ["ClusterOrder", "QuantizedRows", "branch", "cluster_rows"]


class ClusterOrder:
    """Where each token's row sits when U is stored per cluster: cluster, row within it, place in the concat."""

    def __init__(self, labels: np.ndarray, k: int) -> None:
        labels = np.asarray(labels).astype(np.int64)
        order = np.argsort(labels, kind="stable")  # token ids in cluster order
        self.sizes = np.bincount(labels, minlength=k)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.vocab_order = np.empty(len(labels), np.int64)
        self.vocab_order[order] = np.arange(len(labels))  # token id -> column of the concatenated logits
        self.row_in_cluster = self.vocab_order - self.starts[labels]
        self.members = [order[s:s + m] for s, m in zip(self.starts, self.sizes)]


@dataclass
class QuantizedRows:
    """One cluster's rows of a quantized U, in MatMulNBits' layout: codes (n_c, blocks, bytes per block),
    scales (n_c, blocks), zero points (n_c, zero-point bytes per row); `q` describes them."""

    codes: ir.Value
    scales: ir.Value
    zero_points: ir.Value
    q: BlockQuantized


def cluster_rows(b: Builder, f: EmbeddingFactorization, order: ClusterOrder,
                 np_dtype) -> list[ir.Value | QuantizedRows | None]:
    """U_c for each cluster as shared initializers under `U/cluster{c}` (None for an empty cluster): float,
    or, for quantized U, codes, scales and zero points (the bytes GatherBlockQuantized would hold, shaped
    as MatMulNBits reads them). Built once per model, whatever the number of heads and lookups."""
    out = []
    for c, rows in enumerate(order.members):
        if not len(rows):
            out.append(None)
        elif f.U_q is None:
            out.append(b.shared(f"U/cluster{c}", lambda rows=rows: f.U[rows].astype(np_dtype)))
        else:
            q = f.U_q.rows(rows)  # small beside U: codes, scales and zero points of n_c rows
            codes = b.shared(f"U/cluster{c}/codes",
                             lambda q=q: q.data.reshape(len(q.data), q.n_blocks, q.block_size * q.bits // 8))
            out.append(QuantizedRows(codes, b.shared(f"U/cluster{c}/scales", lambda q=q: q.scales),
                                     b.shared(f"U/cluster{c}/zero_points", lambda q=q: q.zero_points), q))
    return out


def branch(b: Builder, f: EmbeddingFactorization, c: int, np_dtype) -> ir.Value:
    """V_c as the initializer `branch{c}/V`, which the lookup's grouped branches read too."""
    return branch_weights(b, f"branch{c}/V", f.V[c], np_dtype)
