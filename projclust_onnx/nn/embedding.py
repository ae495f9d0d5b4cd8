"""ProjClustEmbedding: the factorized table as a trainable PyTorch module.

A drop-in for nn.Embedding whose row t is U[t] @ V[c(t)], computed in the same
layouts as the graph pass, so that a short fine-tune can recover what compression
cost. `replace_word_embeddings` swaps it into a Hugging Face model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from projclust_onnx.storage.factorization import EmbeddingFactorization

LAYOUTS = ("grouped", "onehot")


class ProjClustEmbedding(nn.Module):
    """forward(input_ids of any shape) -> (*input_ids.shape, d).

    Parameters U of shape (n, j) and V of shape (k, j, d); the cluster ids are a buffer
    (fixed: the clustering is not differentiable, the factors are).
    """

    def __init__(self, factorization: EmbeddingFactorization, layout: str = "grouped") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}")
        self.layout = layout
        self.U = nn.Parameter(torch.from_numpy(np.array(factorization.U, dtype=np.float32)))
        self.V = nn.Parameter(torch.from_numpy(np.array(factorization.V, dtype=np.float32)))
        self.register_buffer("cluster_ids", torch.from_numpy(factorization.labels.astype(np.int64)))

    @property
    def num_embeddings(self) -> int:
        return self.U.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.V.shape[2]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        flat = input_ids.reshape(-1)
        u = self.U[flat]
        cid = self.cluster_ids[flat]
        k, j, d = self.V.shape
        if self.layout == "onehot":
            mask = nn.functional.one_hot(cid, k).to(u.dtype)
            out = (mask[:, :, None] * u[:, None, :]).reshape(-1, k * j) @ self.V.reshape(k * j, d)
        else:
            out = u.new_zeros(flat.shape[0], d)
            for c in range(k):
                rows = torch.nonzero(cid == c).flatten()
                if rows.numel():
                    out = out.index_put((rows,), u[rows] @ self.V[c])
        return out.reshape(*input_ids.shape, d)

    def to_factorization(self) -> EmbeddingFactorization:
        """The current (trained) factors, for the graph pass."""
        return EmbeddingFactorization(labels=self.cluster_ids.cpu().numpy(), U=self.U.detach().cpu().numpy(),
                                      V=self.V.detach().cpu().numpy())

    def extra_repr(self) -> str:
        k, j, d = self.V.shape
        return f"n={self.U.shape[0]}, d={d}, k={k}, j={j}, layout={self.layout}"


def check_untied(model) -> None:
    """ValueError when the model's output embedding shares the input table (a tied LM head)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    table = model.get_input_embeddings().weight
    if output is not None and getattr(output, "weight", None) is not None and output.weight is table:
        raise ValueError(f"{type(model).__name__} ties its input and output embeddings; tied tables are not "
                         "supported yet: use an encoder-only head (sequence classification, feature extraction)")


def replace_word_embeddings(model, factorization: EmbeddingFactorization, layout: str = "grouped"):
    """Swap a Hugging Face model's input embeddings for a ProjClustEmbedding of `factorization`."""
    check_untied(model)
    current = model.get_input_embeddings()
    n, d = current.weight.shape
    if (factorization.n_rows, factorization.dim) != (n, d):
        raise ValueError(f"the factorization is {factorization.n_rows} x {factorization.dim} but the model's "
                         f"input embedding is {n} x {d}")
    module = ProjClustEmbedding(factorization, layout).to(current.weight.device)
    model.set_input_embeddings(module)
    return module


def densify_word_embeddings(model) -> EmbeddingFactorization:
    """Put back an nn.Embedding holding the reconstruction, for export; returns the factors.

    The exported graph then carries the exact dense table U[t] @ V[c(t)], which the graph
    pass rewrites into the k-branch form with these very factors (parity is checked there).
    """
    module = model.get_input_embeddings()
    if not isinstance(module, ProjClustEmbedding):
        raise ValueError("the model's input embedding is not a ProjClustEmbedding")
    factorization = module.to_factorization()
    dense = nn.Embedding(module.num_embeddings, module.embedding_dim)
    dense.weight.data = torch.from_numpy(factorization.reconstruct()).to(module.U.device)
    model.set_input_embeddings(dense)
    return factorization
