"""What a rewrite pass returns: the onnx-ir PassResult, plus the bytes of the initializers it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir
from projclust_onnx.passes.analysis import WordTableAnalysis, analyse_word_table

__all__ = ["RewriteResult", "written_since", "analysis_for"]


@dataclass
class RewriteResult(ir.passes.PassResult):
    """PassResult with `written`: bytes of the initializers the pass added, by kind ("U", "V", "cluster ids",
    "index maps", "table", "constants")."""

    written: dict[str, int] = field(default_factory=dict)

    @property
    def written_bytes(self) -> int:
        return sum(self.written.values())


# The first part of a new initializer's name (after projclust/) -> the kind a report counts it as.
_KINDS = {"U": "U", "V": "V", "cluster_ids": "cluster ids", "row_in_cluster": "index maps",
          "vocab_order": "index maps", "table": "table"}


def written_since(graph: ir.Graph, before: set[str]) -> dict[str, int]:
    """Bytes of the initializers of `graph` not in `before` (the names there before the pass ran), by kind."""
    written: dict[str, int] = {}
    for name, value in graph.initializers.items():
        if name in before or value.const_value is None:
            continue
        parts = name.split("/")[1:] or [name]
        kind = "V" if "V" in parts else _KINDS.get(parts[0], "constants")
        written[kind] = written.get(kind, 0) + value.const_value.nbytes
    return written


def analysis_for(model: ir.Model, analysis: WordTableAnalysis | None, ids_input: str) -> WordTableAnalysis:
    """The analysis a pass reads: the one it was given, bound to `model` (a copy loaded again is found by
    position), or, when none was given or the given one is spent (its lookups rewritten), a new one;
    PreconditionError for the finder's refusals."""
    try:
        if analysis is not None:
            analysis = analysis.bind(model)
            if analysis.is_current():
                return analysis
        return analyse_word_table(model.graph, ids_input)
    except ValueError as err:
        raise ir.passes.PreconditionError(str(err)) from err
