"""Find the word-embedding lookup of an exported transformer by its structure.

The word embedding is a Gather (axis 0) whose data is a 2-D floating-point
initializer and whose indices come from the token-id graph input, directly or
through shape-only ops (Cast, Reshape, Squeeze, Unsqueeze, Flatten, Identity).
Initializer names are never consulted: they differ by head and exporter.
Position and token-type tables are Gathers too, but their indices come from other
inputs or are computed, so they are rejected (and logged with the reason).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx_ir as ir

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingMatch", "EmbeddingSearch", "search_word_embedding", "find_word_embedding"]

# Ops that change only the shape or integer type of the ids on their way to the Gather.
_ID_PASSTHROUGH = frozenset({"Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
_INT_TYPES = frozenset({ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32,
                        ir.DataType.INT32, ir.DataType.INT64})


@dataclass
class EmbeddingMatch:
    """One word-embedding lookup: the Gather, its table initializer and the ids input."""

    gather: ir.Node
    table: ir.Value
    ids_input: ir.Value

    @property
    def shape(self) -> tuple[int, int]:
        n, d = self.table.const_value.shape
        return int(n), int(d)

    @property
    def dtype(self) -> ir.DataType:
        return self.table.const_value.dtype

    def other_consumers(self) -> list[ir.Node]:
        """Nodes besides the lookup that read the table (a tied LM head, typically)."""
        return [node for node, _ in self.table.uses() if node is not self.gather]

    def check_untied(self) -> None:
        """ValueError when another node reads the table: rewriting it would break that reader."""
        others = self.other_consumers()
        if others:
            users = ", ".join(f"{n.op_type} {n.name!r}" for n in others)
            raise ValueError(
                f"the word-embedding table {self.table.name!r} is also read by {users} "
                "(a tied LM head); tied tables are not supported yet. Export with untied "
                "weights, or compress an encoder-only model")


@dataclass
class EmbeddingSearch:
    """All candidates, with the reason each Gather was rejected; `factorized` lists
    lookups that already have the k-branch form (the pass's own output)."""

    matches: list[EmbeddingMatch] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    factorized: list[ir.Node] = field(default_factory=list)
    fused: list[ir.Node] = field(default_factory=list)

    def single(self) -> EmbeddingMatch:
        """The one match; ValueError naming the rejections when there is none, or the candidates."""
        if not self.matches and self.factorized:
            raise ValueError("the word embedding is already factorized (a cluster-id lookup of the token ids was "
                             "found); compress the original model instead")
        if not self.matches and self.fused:
            raise ValueError(
                f"the embeddings are fused into {self.fused[0].op_type} {self.fused[0].name!r} (ONNX Runtime's "
                "transformers optimizer); compress before that fusion, or optimize with Optimum's default "
                "disable_embed_layer_norm_fusion=True")
        if not self.matches:
            detail = "; ".join(f"{name}: {why}" for name, why in self.rejected) or "no Gather at all"
            raise ValueError("no word-embedding lookup found (a Gather of a 2-D initializer indexed by "
                             f"the token ids); candidates rejected: {detail}")
        if len(self.matches) > 1:
            names = [f"{m.gather.name} ({m.table.name}, {m.shape[0]}x{m.shape[1]})" for m in self.matches]
            raise ValueError(f"{len(self.matches)} word-embedding candidates found: {names}; "
                             "the pass rewrites exactly one lookup of the token ids")
        return self.matches[0]

    def reject(self, node: ir.Node, reason: str) -> None:
        self.rejected.append((node.name or node.op_type, reason))
        logger.info("rejected %s %r: %s", node.op_type, node.name, reason)


def _trace_to_graph_input(value: ir.Value | None) -> ir.Value | None:
    """Follow shape-only producers back to a graph input; None if the ids are computed."""
    while value is not None and not value.is_graph_input():
        producer = value.producer()
        if producer is None or producer.op_type not in _ID_PASSTHROUGH or producer.domain not in ("", "ai.onnx"):
            return None
        value = producer.inputs[0]
    return value


def _table_of(node: ir.Node) -> ir.Value | None:
    data = node.inputs[0]
    if data is None or data.const_value is None or not data.is_initializer():
        return None
    return data


def search_word_embedding(graph: ir.Graph, ids_input: str = "input_ids") -> EmbeddingSearch:
    """Every Gather in `graph` sorted into matches, already-factorized lookups and rejections."""
    search = EmbeddingSearch()
    id_inputs = [v for v in graph.inputs if v.name == ids_input]
    if not id_inputs:
        names = [v.name for v in graph.inputs]
        raise ValueError(f"the model has no graph input named {ids_input!r} (inputs: {names}); "
                         "pass the token-id input's name as ids_input")
    ids_value = id_inputs[0]
    for node in graph:
        if node.op_type == "EmbedLayerNormalization":
            search.fused.append(node)
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        table = _table_of(node)
        if table is None:
            search.reject(node, "data is not an initializer")
            continue
        axis = node.attributes.get("axis")
        if axis is not None and axis.as_int() != 0:
            search.reject(node, f"gathers along axis {axis.as_int()}, not 0")
            continue
        source = _trace_to_graph_input(node.inputs[1])
        if source is not ids_value:
            search.reject(node, f"indices do not come from the graph input {ids_input!r}")
            continue
        rank = len(table.const_value.shape)
        if rank == 1 and table.const_value.dtype in _INT_TYPES:
            search.factorized.append(node)  # a cluster-id table: the pass already ran here
            continue
        if rank != 2 or table.const_value.dtype not in _FLOAT_TYPES:
            search.reject(node, f"table is {rank}-D {table.const_value.dtype.name}, not a 2-D float table")
            continue
        search.matches.append(EmbeddingMatch(node, table, ids_value))
    if search.factorized:
        # Lookups that share their ids with a cluster-id lookup are the U tables of a
        # factorized embedding, not word embeddings.
        factorized_ids = {n.inputs[1] for n in search.factorized}
        for match in list(search.matches):
            if match.gather.inputs[1] in factorized_ids:
                search.matches.remove(match)
                search.reject(match.gather, "coefficient table of an already factorized embedding")
    return search


def find_word_embedding(graph: ir.Graph, ids_input: str = "input_ids") -> EmbeddingMatch:
    """The single word-embedding lookup of `graph`; ValueError when there is none or several."""
    return search_word_embedding(graph, ids_input).single()
