"""Budget arithmetic in bytes as stored, shared by the core, the pass, the config and the CLI.

A factorized table stores U (n x j), the k branch matrices V (k x j x d) and, for
k > 1, one cluster id per row. With quantize="none", U and V keep the table's dtype;
with "int8" or "int4", U is block-quantized (quantization.BlockQuantized: codes,
float16 scales, zero points) and V is float16. `compression` removes that fraction
of the table's bytes, so 4-bit U buys a larger rank than float U at the same size.
"""

from __future__ import annotations

from projclust_onnx.common.errors import SettingError
from projclust_onnx.storage.factorization import Factors, id_dtype
from projclust_onnx.storage.registry import FLOAT_U, QUANTIZE, bits_of, factor_storage

__all__ = ["QUANTIZE", "factorized_bytes", "factorized_size", "id_dtype", "index_map_bytes", "no_room",
           "rank_for", "rank_for_bytes", "rank_for_budget", "rank_step"]


def index_map_bytes(n_rows: int) -> int:
    """Bytes of the two int32 maps a rewritten tied head adds: each token's row within its cluster, and
    its column in the cluster-ordered logits (passes.factorize_head.ClusterOrder)."""
    return 2 * 4 * n_rows


def factorized_bytes(n_rows: int, dim: int, n_clusters: int, rank: int, table_itemsize: int = 4,
                     quantize: str = FLOAT_U, block_size: int = 32) -> int:
    """Bytes of U, V and the cluster ids as stored (storage.factorization.Factors.nbytes)."""
    return Factors(n_clusters, rank, factor_storage(quantize, block_size)).nbytes(n_rows, dim, table_itemsize)


def factorized_size(n_rows: int, dim: int, n_clusters: int, rank: int, param_bytes: int = 4) -> float:
    """Parameter-equivalents of the float factorized table: n*j + k*j*d + ids (ids in bytes / param_bytes)."""
    return factorized_bytes(n_rows, dim, n_clusters, rank, param_bytes) / param_bytes


def rank_step(quantize: str, block_size: int) -> int:
    """Ranks a storage allows: any for float U, multiples of the block for quantized U
    (ONNX Runtime's CUDA GatherBlockQuantized is wrong on a partial last block)."""
    return factor_storage(quantize, block_size).rank_step()


def rank_for_bytes(n_rows: int, dim: int, n_clusters: int, budget_bytes: float, table_itemsize: int = 4,
                   quantize: str = FLOAT_U, block_size: int = 32) -> int:
    """The largest allowed rank j < dim whose factorized bytes fit budget_bytes; ValueError if none does."""
    step = rank_step(quantize, block_size)
    ids = factorized_bytes(n_rows, dim, n_clusters, 0, table_itemsize, quantize, block_size)
    per_rank = factorized_bytes(n_rows, dim, n_clusters, step, table_itemsize, quantize, block_size) - ids
    # Bytes grow almost linearly in j (packed zero points round per block): start one step
    # above the linear estimate and step down until it fits.
    rank = (int((budget_bytes - ids) // per_rank) + 1) * step if budget_bytes > ids else 0
    rank = min(rank, (dim - 1) // step * step)
    while rank >= step and factorized_bytes(n_rows, dim, n_clusters, rank, table_itemsize, quantize,
                                            block_size) > budget_bytes:
        rank -= step
    while rank + step < dim and factorized_bytes(n_rows, dim, n_clusters, rank + step, table_itemsize, quantize,
                                                 block_size) <= budget_bytes:
        rank += step  # the estimate fell short (packed zero points round up per block)
    if rank < 1:
        raise SettingError("compression", no_room(n_rows, dim, n_clusters, budget_bytes, table_itemsize, quantize,
                                                  block_size))
    return rank


def rank_for_budget(n_rows: int, dim: int, n_clusters: int, compression: float, param_bytes: int = 4,
                    quantize: str = FLOAT_U, block_size: int = 32) -> int:
    """The largest rank j whose factorized bytes are at most (1 - compression) of the table's bytes.

    For float storage that is n*j + k*j*d + ids <= (1 - compression) * n * d parameter-equivalents.
    Raises ValueError when even the smallest rank does not fit the budget.
    """
    if not 0.0 < compression < 1.0:
        raise ValueError(f"compression={compression} must lie in (0, 1), e.g. 0.4 for a 40% smaller table")
    if n_clusters < 1:
        raise ValueError(f"n_clusters={n_clusters} must be >= 1")
    budget = (1.0 - compression) * n_rows * dim * param_bytes
    return _rank_for_compression(n_rows, dim, n_clusters, compression, budget, param_bytes, quantize, block_size)


def rank_for(n_rows: int, dim: int, n_clusters: int, *, compression: float | None = None, rank: int | None = None,
             param_bytes: int = 4, quantize: str = FLOAT_U, block_size: int = 32, stored_bytes: int | None = None,
             extra_bytes: int = 0) -> int:
    """The rank j a budget setting gives a table of n_rows x dim whose values are param_bytes wide (the float
    type the model computes in): `rank` itself, checked against the table, or else the largest rank whose
    factorized bytes fit (1 - compression) of the table as stored, `stored_bytes` (default: as floats; less
    for a table ONNX Runtime already quantized). `extra_bytes` must fit in the budget besides U, V and the
    cluster ids (the index maps of a rewritten tied head). A SettingError names the setting at fault."""
    if rank is None:
        if compression is None:
            raise ValueError("rank_for needs compression or rank (a target_ratio budget is the chooser's to spend)")
        stored = n_rows * dim * param_bytes if stored_bytes is None else stored_bytes
        return _rank_for_compression(n_rows, dim, n_clusters, compression, (1 - compression) * stored - extra_bytes,
                                     param_bytes, quantize, block_size)
    if rank >= dim:
        raise SettingError("rank", f"{{}}={rank} must be < the table's dim={dim}")
    if quantize != FLOAT_U and rank % block_size:
        raise SettingError("rank", f"{{}}={rank} must be a multiple of {{block_size}}={block_size} "
                           "with quantized factors")
    size = factorized_bytes(n_rows, dim, n_clusters, rank, param_bytes, quantize, block_size)
    if size >= n_rows * dim * param_bytes:
        raise SettingError("rank", f"{{}}={rank} with {{n_clusters}}={n_clusters} stores {size:,} bytes, "
                           f"no fewer than the {n_rows} x {dim} table's {n_rows * dim * param_bytes:,}; "
                           "lower {} or use {compression}")
    return rank


def _rank_for_compression(n_rows: int, dim: int, n_clusters: int, compression: float, budget_bytes: float,
                          table_itemsize: int, quantize: str, block_size: int) -> int:
    """rank_for_bytes, with its SettingError told as one about the compression that set budget_bytes."""
    try:
        return rank_for_bytes(n_rows, dim, n_clusters, budget_bytes, table_itemsize, quantize, block_size)
    except SettingError as err:
        raise SettingError("compression", f"{{}}={compression}: {err.message}") from None


def no_room(n_rows: int, dim: int, n_clusters: int, budget_bytes: float, table_itemsize: int, quantize: str,
            block_size: int) -> str:
    """Why no rank fits, and the advice that matches the cause, as a SettingError message about compression."""
    step = rank_step(quantize, block_size)
    if dim <= 1:  # no rank lies below d at all
        return (f"the table's dim={dim} leaves no rank below it to factorize into; give {{target_ratio}} to store "
                "it in fewer bits instead")
    if step >= dim:  # no multiple of the block lies below d, whatever the budget
        smaller = f"a {{block_size}} below {dim}, or " if dim > 16 else ""
        return (f"{quantize} factors take ranks in multiples of {{block_size}}={block_size}, and the table's dim={dim} "
                f"leaves none below it; give {smaller}{{quantize}} 'none'")
    fewest = factorized_bytes(n_rows, dim, n_clusters, step, table_itemsize, quantize, block_size)
    denser = _denser(quantize)
    return (f"{budget_bytes:,.0f} bytes leave no room for rank {step} on a {n_rows} x {dim} table with "
            f"{{n_clusters}}={n_clusters} and {{quantize}}={quantize!r} (that needs {fewest:,} bytes); lower {{}} or "
            f"{{n_clusters}}{denser}")


def _denser(quantize: str) -> str:
    """The advice to store U in fewer bits, naming the storages that do: ", or {quantize} 'int8' or 'int4'"."""
    bits = bits_of(quantize)
    names = [name for name in QUANTIZE if bits_of(name) is not None and (bits is None or bits_of(name) < bits)]
    if not names:
        return ""
    return ", or {quantize} " + " or ".join(map(repr, names)) + (" (more rank per byte)" if bits is None else "")
