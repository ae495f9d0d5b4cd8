"""The analysis of a model's word table, built once per model file and handed to every pass.

`analyse_word_table(graph)` runs the finder (word_embedding.py) and the head rule set
(head_forms.py) once and freezes what they found: every lookup of the table (one per If
branch of a merged decoder), how the table is stored, the tied heads with their forms,
the transposed copies, and why anything was refused. The plan, `projclust-onnx inspect`
and the passes read it; nothing is searched or compared by content again. A reference
model loaded again from the same file is described by `bind`, which maps the analysis
onto it by position, without searching.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.head_forms import Head, find_heads, head_copies, not_a_head_error
from projclust_onnx.passes.word_embedding import EmbeddingMatch, search_word_embedding

logger = logging.getLogger(__name__)

__all__ = ["WordTableAnalysis", "analyse_word_table"]


@dataclass(frozen=True)
class WordTableAnalysis:
    """What a model's graph holds of its word table, found once.

    matches: every lookup of the table (several when the branches of an If each read it), or every
        candidate when `error` says why no single table was found; rejected: (lookup, reason) pairs;
        factorized, fused, standard_quantized: lookups that say the model was compressed or fused already;
        error: why there is no single word table (None when there is one); heads: the tied LM heads, in
        the order they are rewritten; heads_error: why a reader of the table is neither a lookup nor a head;
        concatenated: initializers holding the table's transpose beside other rows (MobileBERT's head).
    """

    graph: ir.Graph
    ids_input: str
    matches: tuple[EmbeddingMatch, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()
    factorized: tuple[ir.Node, ...] = ()
    fused: tuple[ir.Node, ...] = ()
    standard_quantized: tuple[ir.Node, ...] = ()
    error: str | None = None
    heads: tuple[Head, ...] = ()
    heads_error: str | None = None
    concatenated: tuple[ir.Value, ...] = ()
    # Each node above by its place in the recursive traversal: how `bind` finds it in a copy of the graph.
    positions: dict[int, int] = field(default_factory=dict, repr=False, compare=False)
    n_nodes: int = field(default=0, repr=False, compare=False)

    @property
    def match(self) -> EmbeddingMatch:
        """The first lookup of the one word table; ValueError (the finder's message) when there is none."""
        if self.error is not None:
            raise ValueError(self.error)
        return self.matches[0]

    @property
    def found(self) -> bool:
        return self.error is None

    @property
    def table(self) -> ir.Value:
        return self.match.table

    @property
    def storage(self) -> str:
        return self.match.storage

    @property
    def shape(self) -> tuple[int, int]:
        return self.match.shape

    @property
    def dtype(self) -> ir.DataType:
        return self.match.dtype

    @property
    def bits(self) -> int | None:
        return self.match.bits

    @property
    def stored_bytes(self) -> int:
        return self.match.stored_bytes

    def dense(self) -> np.ndarray:
        return self.match.dense()

    @property
    def copies(self) -> list[ir.Value]:
        """The distinct transposed copies of the table that the heads read."""
        return head_copies(self.heads)

    def tied_heads(self) -> tuple[Head, ...]:
        """The heads; ValueError naming a reader of the table that is neither a lookup nor a head."""
        if self.error is not None:  # the finder's refusal first
            raise ValueError(self.error)
        if self.heads_error is not None:
            raise ValueError(self.heads_error)
        return self.heads

    def check_untied(self) -> None:
        """ValueError when another node reads the table: rewriting it would break that reader."""
        self.match.check_untied()

    def is_current(self) -> bool:
        """Whether the lookups are still in the graph (a rewrite detaches them)."""
        return all(m.lookup.graph is not None for m in self.matches)

    def bind(self, model: ir.Model) -> WordTableAnalysis:
        """This analysis for `model`: itself when it describes model.graph, else the same description of
        `model`, a copy of the analysed model (loaded again from its file), found by position, not searched.
        ValueError when `model` is not such a copy."""
        if model.graph is self.graph:
            return self
        nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
        if len(nodes) != self.n_nodes:
            raise ValueError(f"the analysis describes a graph of {self.n_nodes} nodes, not this one of "
                             f"{len(nodes)}; analyse the model itself (analyse_word_table)")

        def node(old: ir.Node) -> ir.Node:
            new = nodes[self.positions[id(old)]]
            if (new.op_type, new.name) != (old.op_type, old.name):
                raise ValueError(f"the analysis found {old.op_type} {old.name!r} where this graph has "
                                 f"{new.op_type} {new.name!r}; analyse the model itself (analyse_word_table)")
            return new

        inputs = {v.name: v for v in model.graph.inputs}

        def rebound(m: EmbeddingMatch) -> EmbeddingMatch:
            replaced = tuple(node(n) for n in m.nodes)
            return EmbeddingMatch(replaced[0], replaced[0].inputs[0], inputs[m.ids_input.name],
                                  replaced[-1].outputs[0], replaced, m.stored_as, tuple(map(node, m.lookups)))

        heads = tuple(Head(node(h.node), h.rule, node(h.node).inputs[1], tuple(node(r) for r in h.removed))
                      for h in self.heads)
        return WordTableAnalysis(
            model.graph, self.ids_input, tuple(rebound(m) for m in self.matches), self.rejected,
            tuple(map(node, self.factorized)), tuple(map(node, self.fused)),
            tuple(map(node, self.standard_quantized)), self.error, heads, self.heads_error,
            tuple(model.graph.initializers[v.name] for v in self.concatenated),
            {id(nodes[i]): i for i in self.positions.values()}, self.n_nodes)


def analyse_word_table(graph: ir.Graph, ids_input: str = "input_ids") -> WordTableAnalysis:
    """Find the word table of `graph` (the model's main graph), its lookups and its tied heads, once.

    ValueError only when `graph` has no input `ids_input`; every other refusal is kept in the analysis
    (`error`, `heads_error`) and raised by what reads it.
    """
    search = search_word_embedding(graph, ids_input)
    error = heads_error = None
    heads, concatenated = [], []
    try:
        match = search.single()
    except ValueError as err:
        error = str(err)
    else:
        copies, concatenated = match.transpose_holders(graph)  # the only comparison by content
        heads, strangers = find_heads(match.table, match.other_consumers(), copies)
        heads_error = not_a_head_error(match.table, strangers) if strangers else None
    nodes = list(ir.traversal.RecursiveGraphIterator(graph))
    referred = {id(n) for n in [*(x for m in search.matches for x in m.nodes), *search.factorized, *search.fused,
                                *search.standard_quantized, *(x for h in heads for x in (h.node, *h.removed))]}
    positions = {id(n): i for i, n in enumerate(nodes) if id(n) in referred}
    return WordTableAnalysis(graph, ids_input, tuple(search.matches), tuple(search.rejected),
                             tuple(search.factorized), tuple(search.fused), tuple(search.standard_quantized),
                             error, tuple(heads), heads_error, tuple(concatenated), positions, len(nodes))
