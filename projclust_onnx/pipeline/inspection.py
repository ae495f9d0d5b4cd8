"""What `compress` would do, without doing it: the word table each file holds, its heads, and the budget
arithmetic for a config. `ProjClustCompressor.inspect` returns it; `projclust-onnx inspect` prints its rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from projclust_onnx.core.budget import factorized_bytes, id_dtype, index_map_bytes, rank_for
from projclust_onnx.pipeline.config import ProjClustConfig
from projclust_onnx.pipeline.plan import analyse_file, method_storages
from projclust_onnx.storage.registry import bits_of, factor_storage, method_format, name_for_bits, u_label


@dataclass
class Inspection:
    """The findings as (label, text) rows, in the order `projclust-onnx inspect` prints them."""

    rows: list[tuple[str, str]]

    def __str__(self) -> str:
        return "\n".join(f"{key}: {value}" for key, value in self.rows)


def inspect_files(onnx_paths: list[Path], config: ProjClustConfig) -> Inspection:
    """What `compress` with `config` would find and spend in each file, without fitting or writing anything."""
    rows, found, tied_any, held_copies = [], [], False, 0
    entry = method_format(config.method)
    for path in onnx_paths:
        model, analysis = analyse_file(path, config.ids_input, checked=False)  # the plan's analysis of the file
        rows += [("model file", str(path)), ("graph inputs", ", ".join(v.name for v in model.graph.inputs))]
        if analysis is None:
            rows.append(("word embedding", f"none (no input {config.ids_input!r}): copied unchanged"))
            continue
        rows += _analysis_rows(analysis)
        if not analysis.found:
            continue
        match = analysis.match
        try:
            heads = analysis.tied_heads() if match.stored_float else []
            tied = ", ".join(h.describe() for h in heads) or "no"
            if heads:
                tied += " (kept dense where it is its own copy: untied)" if config.head == "keep" else \
                    f" (reads the table the {entry.plural()} decode to)" if not entry.branches else \
                    " (rewritten with the same factors)"
                tied_any = tied_any or config.head != "keep"
                held_copies += len(analysis.copies) if config.head != "keep" else 0
        except ValueError as err:
            tied = f"refused: {err}"
        rows.append(("tied LM head", tied))
        found.append(match)
        held_copies += 1
    by_storage = {}  # the byte arithmetic once per way the table is stored: an int8 variant gets its own
    for match in found:
        by_storage.setdefault(match.storage, match)
    for match in by_storage.values():
        if len(by_storage) > 1:
            rows.append(("table stored", f"{match.storage}:"))
        n, d = match.shape
        itemsize = match.dtype.numpy().itemsize
        table_bytes = n * d * itemsize
        if not entry.branches:
            budget, tried = method_storages(entry, n, d, match.stored_bytes, config, itemsize, tied_any)
            rows.append((entry.plural(), f"within {budget:,.0f} bytes: " + ("; ".join(
                f"{s.label} = {s.nbytes(n, d):,} bytes" for s in tried) or "none fits (ask for less)") +
                "; the lowest error (the larger of the calibration-weighted and the uniform one) is kept"))
            continue
        if config.target_ratio:
            rows.append(("target", f"{table_bytes:,} / {config.target_ratio:g} = "
                                   f"{table_bytes / config.target_ratio:,.0f} bytes; the chooser compares plain "
                                   "quantization, codebooks (product quantization), SVD and projective clustering "
                                   "with float, int8 and int4 U"))
            continue
        quantize = config.quantize or name_for_bits(match.bits)
        k, b = config.n_clusters, config.block_size
        extra = index_map_bytes(n) if tied_any else 0
        j = config.rank_for(n, d, itemsize, quantize, match.stored_bytes, extra_bytes=extra)
        ids = n * id_dtype(k).itemsize if k > 1 else 0
        if bits_of(quantize) is None:
            u_text, u_bytes, v_bytes = f"n*j*{itemsize} = {n}*{j}*{itemsize}", n * j * itemsize, k * j * d * itemsize
            v_text = f"k*j*d*{itemsize}"
        else:
            u_bytes, v_bytes = factor_storage(quantize, b).nbytes(n, j), k * j * d * 2
            u_text = f"{quantize} codes, float16 scales and zero points per block of {b}: {n} rows x {j}"
            v_text = "k*j*d*2 (float16)"
        total = factorized_bytes(n, d, k, j, itemsize, quantize, b)
        budget = f"{(1 - config.compression) * match.stored_bytes:,.0f}" if config.compression else \
            "n/a (rank given)"
        rows += [
            ("settings", f"method={config.method}, k={k}, j={j}, U {u_label(quantize, b, match.dtype.numpy().name)}" +
             (f", compression={config.compression:.0%}" if config.compression else "")),
            ("U bytes", f"{u_text} = {u_bytes:,}"),
            ("V bytes", f"{v_text} = {k}*{j}*{d}*{v_bytes // max(k * j * d, 1)} = {v_bytes:,}"),
            ("cluster ids", f"{id_dtype(k).name}, {ids:,} bytes" if k > 1 else "none (k=1)"),
            *([("index maps", f"row in cluster and vocabulary order, int32: 2*4*n = {extra:,} bytes (tied head)")]
              if extra else []),
            ("budget (bytes)", f"U + V + ids{' + maps' if extra else ''} = {total + extra:,} <= (1-c) * stored "
                               f"table = {budget} (stored "
                               f"{match.stored_bytes:,}; {table_bytes / (total + extra):.2f}x smaller than the "
                               f"{match.dtype.numpy().name} table)"),
            ("embedding parameters",
             f"{n * d:,} -> {n * j + k * j * d:,} ({1 - (n * j + k * j * d) / (n * d):.1%} fewer)"),
        ]
        if held_copies > 1 and len(by_storage) == 1:
            files = len(found)
            rows.append(("table copies", f"{held_copies} in {files} file(s) (lookups, heads' transposed copies): "
                                         f"{held_copies * table_bytes:,} -> {files * (total + extra):,} bytes"))
        if config.compression and k > 1:
            svd = rank_for(n, d, 1, compression=config.compression, param_bytes=itemsize, quantize=quantize,
                           block_size=b, stored_bytes=match.stored_bytes, extra_bytes=extra)
            rows.append(("svd at same budget", f"j={svd}"))
    return Inspection(rows)


def _analysis_rows(analysis) -> list[tuple[str, str]]:
    """What inspect shows of a file's word-table analysis: rejected lookups, an earlier factorization, the table."""
    rows = []
    computed = [name for name, reason in analysis.rejected if reason == "data is not an initializer"]
    for name, reason in analysis.rejected:
        if reason != "data is not an initializer":
            rows.append(("rejected lookup", f"{name}: {reason}"))
    if computed:
        rows.append(("other Gathers", f"{len(computed)} of computed tensors (not tables)"))
    for node in analysis.factorized:
        rows.append(("already factorized", f"{node.name} (cluster-id lookup)"))
    if not analysis.matches:
        return [*rows, ("word embedding", "none found")]
    if not analysis.found:
        return [*rows, ("word embedding", f"refused: {analysis.error}")]
    match = analysis.match  # every lookup of one table (both branches of a merged decoder)
    n, d = match.shape
    lookups = f", read by {len(analysis.matches)} lookups (If branches)" if len(analysis.matches) > 1 else ""
    return [*rows, ("word embedding", f"{match.lookup.name}: table {match.table.name} ({n} x {d}, "
                                      f"{match.dtype.numpy().name}, stored {match.storage}){lookups}")]
