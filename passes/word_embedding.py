"""Find the word-embedding lookup of an exported transformer by its structure.

The word embedding is a lookup of rows of a 2-D initializer whose indices come from
the token-id graph input, directly or through shape-only ops (Cast, Reshape,
Squeeze, Unsqueeze, Flatten, Identity). Three stored forms are recognised::

    float table:      Gather(table, ids)                                   -> embeddings
    quantize_dynamic: Gather(uint8 table, ids) -> DequantizeLinear(scale, zero point) -> embeddings
    block-quantized:  com.microsoft.GatherBlockQuantized(codes, ids, scales[, zero points]) -> embeddings

Initializer names are never consulted: they differ by head and exporter. Position and
token-type tables are lookups too, but their indices come from other inputs or are
computed, so they are rejected (and logged with the reason). Subgraphs are searched too:
a merged decoder reads the table in both branches of an If.

A tied LM head reads the same table, in one of three forms (head_forms.py). analysis.py builds
the frozen description of the table that the plan and the passes read, from one search.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir
from projclust_onnx.passes.head_forms import Head, find_heads, head_copies, not_a_head_error

from projclust_onnx.storage.base import CONTRIB_DOMAIN, StorageFormat
from projclust_onnx.storage.blocks import bits_of
from projclust_onnx.storage.float import FloatStorage
from projclust_onnx.storage.registry import Part, part_read_by, recognise

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingMatch", "EmbeddingSearch", "Head", "head_copies", "search_word_embedding",
           "find_word_embedding"]

# Ops that change only the shape or integer type of the ids on their way to the Gather.
# Ops that move or select token ids without computing new ones (XLM slices input_ids before its lookup).
_ID_PASSTHROUGH = frozenset({"Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Transpose",
                             "Expand"})


_SHAPE_ONLY = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def _cast_after(output: ir.Value) -> ir.DataType | None:
    """The float type every reader of `output` casts it to, where each is a Cast to the same float type (past
    a chain of shape-only nodes, each the one reader of the last)."""
    readers = [node for node, _ in output.uses()]
    while len(readers) == 1 and readers[0].op_type in _SHAPE_ONLY and readers[0].domain in ("", "ai.onnx"):
        readers = [node for node, _ in readers[0].outputs[0].uses()]
    targets = {ir.DataType(node.attributes["to"].as_int()) if "to" in node.attributes else None for node in readers
               if node.op_type == "Cast" and node.domain in ("", "ai.onnx")}
    if readers and len(targets) == 1 and all(node.op_type == "Cast" for node in readers):
        target = targets.pop()
        return target if target is not None and target.is_floating_point() else None
    return None


@dataclass(frozen=True)
class EmbeddingMatch:
    """One word-embedding lookup, as found; never changed afterwards.

    lookup: the node reading the token ids (Gather or GatherBlockQuantized); table: the
    stored table (float, or quantized codes); output: the float embeddings; nodes: what
    a rewrite replaces (the lookup, and a DequantizeLinear after it); stored_as: the registered format
    (storage.base.StorageFormat instance) the table is stored in, read back from the graph; lookups: every
    lookup of the same table (one per If branch of a merged decoder).
    """

    lookup: ir.Node
    table: ir.Value
    ids_input: ir.Value
    output: ir.Value = None
    nodes: tuple[ir.Node, ...] = ()
    stored_as: StorageFormat = FloatStorage()
    lookups: tuple[ir.Node, ...] = ()

    def __post_init__(self) -> None:
        # Read once, while the lookup is in the graph: a rewrite detaches its inputs.
        nodes = tuple(self.nodes) or (self.lookup,)
        stored_bytes = sum(v.const_value.nbytes for node in nodes for v in node.inputs
                           if v is not None and v.const_value is not None and v is not self.lookup.inputs[1])
        n, width = (int(x) for x in self.table.const_value.shape)
        if self.stored_float:
            dtype, bits, shape = self.table.const_value.dtype, None, (n, width)
        elif self.lookup.op_type == "Gather":  # quantize_dynamic: the scale's type is the embeddings'
            dtype, bits, shape = nodes[-1].inputs[1].const_value.dtype, 8, (n, width)
        else:
            bits = bits_of(self.lookup)
            packed = bits < 8 and self.table.const_value.dtype == ir.DataType.UINT8  # 8/bits values a byte
            dtype, shape = self.lookup.inputs[2].const_value.dtype, (n, width * 8 // bits if packed else width)
        output = self.output or self.lookup.outputs[0]
        for name, value in dict(output=output, nodes=nodes, lookups=tuple(self.lookups) or (self.lookup,),
                                _stored_bytes=stored_bytes, _dtype=dtype, _bits=bits, _shape=shape,
                                _table_dtype=_cast_after(output) or dtype).items():
            object.__setattr__(self, name, value)

    @property
    def storage(self) -> str:
        """How the table is stored, as reports name it: "float", "int8 per-tensor", "int4 block 32"."""
        return self.stored_as.label

    @property
    def stored_float(self) -> bool:
        """Whether the table is stored in its float type (not quantized)."""
        return self.stored_as.bits is None

    @property
    def gather(self) -> ir.Node:
        return self.lookup

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def dtype(self) -> ir.DataType:
        """The float type of the embeddings the lookup produces."""
        return self._dtype

    @property
    def table_dtype(self) -> ir.DataType:
        """The float type the model uses the embeddings in, what budgets and ratios count a float table in: the
        type a Cast right after the lookup gives them (a quantized table decoded in float16, then cast to
        float32, was a float32 table), else the lookup's own type."""
        return self._table_dtype

    @property
    def stored_bytes(self) -> int:
        """Bytes of the initializers the lookup reads: the table, or its codes, scales and zero points."""
        return self._stored_bytes

    @property
    def bits(self) -> int | None:
        """Bits per stored value of a quantized table; None for a float table."""
        return self._bits

    def dense(self) -> np.ndarray:
        """The table as the model sees it: float, dequantized as the runtime would."""
        if self.stored_float:
            return self.table.const_value.numpy()
        storage = type(self.stored_as)
        return storage.decode(storage.read(self.nodes)).astype(self.dtype.numpy())

    def other_consumers(self) -> list[ir.Node]:
        """Nodes besides the lookups that read the table (a tied LM head, typically)."""
        return [node for node, _ in self.table.uses() if node not in self.lookups]

    def transposed_copies(self, graph: ir.Graph) -> list[tuple[ir.Value, list[ir.Node]]]:
        """Other initializers holding this table's transpose, with their readers: a tied LM head that an
        exporter stored as its own copy (Optimum without accelerate)."""
        return [(value, [node for node, _ in value.uses()]) for value in self.transpose_holders(graph)[0]]

    def concatenated_copies(self, graph: ir.Graph) -> list[ir.Value]:
        """Initializers holding this table's transpose as a block of their rows beside other rows: MobileBERT's
        head multiplies by concat(E^T, dense), which an exporter folds into one (m, n) matrix, m > d."""
        return self.transpose_holders(graph)[1]

    def transpose_holders(self, graph: ir.Graph) -> tuple[list[ir.Value], list[ir.Value]]:
        """(copies, blocks): initializers of the table's type holding its transpose, exactly (d, n), or as the
        first or last d of their m > d rows. One pass over the initializers, compared by content, cheapest
        first."""
        copies, blocks = [], []
        if not self.stored_float:
            return copies, blocks
        table = self.table.const_value.numpy()
        n, d = table.shape
        for value in graph.initializers.values():
            tensor = value.const_value
            if value is self.table or tensor is None or tensor.dtype != self.dtype or len(tensor.shape) != 2 or \
                    tensor.shape[1] != n or tensor.shape[0] < d:
                continue
            rows = tensor.numpy()
            block = rows.shape[0] > d
            starts = (0, rows.shape[0] - d) if block else (0,)
            if any(np.array_equal(rows[s:s + d, :8], table[:8].T) and np.array_equal(rows[s:s + d], table.T)
                   for s in starts):
                (blocks if block else copies).append(value)
        return copies, blocks

    def heads(self, graph: ir.Graph) -> list[Head]:
        """Every LM-head product with this table, in any of the forms of head_forms.HEAD_FORMS; ValueError
        naming a reader of the table (or of its transposed copy) that is neither a lookup nor a head.
        (The plan and the passes read the heads from analysis.analyse_word_table, found once.)"""
        heads, strangers = find_heads(self.table, self.other_consumers(), self.transpose_holders(graph)[0])
        if strangers:
            raise ValueError(not_a_head_error(self.table, strangers))
        return heads

    def check_untied(self) -> None:
        """ValueError when another node reads the table: rewriting it would break that reader."""
        others = self.other_consumers()
        if others:
            users = ", ".join(f"{n.op_type} {n.name!r}" for n in others)
            raise ValueError(
                f"the word-embedding table {self.table.name!r} is also read by {users} "
                "(a tied LM head); this rewrite leaves heads alone. Rewrite the head with the same "
                "factors (the default of projclust-onnx compress), or export with untied weights")


@dataclass
class EmbeddingSearch:
    """All candidates, with the reason each Gather was rejected; `factorized` lists
    lookups that already have the k-branch form (the pass's own output)."""

    matches: list[EmbeddingMatch] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    factorized: list[ir.Node] = field(default_factory=list)
    fused: list[ir.Node] = field(default_factory=list)
    standard_quantized: list[ir.Node] = field(default_factory=list)

    def single(self) -> EmbeddingMatch:
        """The one match; ValueError naming the rejections when there is none, or the candidates."""
        if not self.matches and self.factorized:
            raise ValueError("the word embedding is already factorized (a cluster-id lookup of the token ids was "
                             "found); compress the original model instead")
        if not self.matches and self.standard_quantized and any(why == _SCALES for _, why in self.rejected):
            raise ValueError("the word embedding is already stored block-quantized in the standard-opset form "
                             "(integer codes, scales and zero points gathered by the token ids); compress the "
                             "original model instead")
        if not self.matches and self.standard_quantized:
            node = self.standard_quantized[0]
            if _gathers_by_codes(node):
                raise ValueError(f"the word table is already stored as codebooks (uint8 codes "
                                 f"{node.inputs[0].name!r} gathered by the token ids, then centroids gathered by "
                                 "the codes); compress the original model instead")
            raise ValueError(f"the word table {node.inputs[0].name!r} is stored as uint8 that {node.name!r} gathers "
                             "without one per-tensor DequantizeLinear after it (a quantization this tool does not "
                             "read, such as per-channel scales); compress the float model, then quantize")
        if not self.matches and self.fused:
            raise ValueError(
                f"the embeddings are fused into {self.fused[0].op_type} {self.fused[0].name!r} (ONNX Runtime's "
                "transformers optimizer); compress before that fusion, or optimize with Optimum's default "
                "disable_embed_layer_norm_fusion=True")
        if not self.matches:
            detail = "; ".join(f"{name}: {why}" for name, why in self.rejected) or "no Gather at all"
            raise ValueError("no word-embedding lookup found (a Gather of a 2-D initializer indexed by "
                             f"the token ids); candidates rejected: {detail}")
        tables = {id(m.table) for m in self.matches}
        if len(tables) > 1:
            names = [f"{m.gather.name} ({m.table.name}, {m.shape[0]}x{m.shape[1]})" for m in self.matches]
            raise ValueError(f"{len(self.matches)} word-embedding candidates found: {names}; "
                             "the pass rewrites the lookups of exactly one table of the token ids")
        return self.matches[0]

    def all(self) -> list[EmbeddingMatch]:
        """Every lookup of the one word table (several when the branches of an If each read it)."""
        self.single()
        return list(self.matches)

    def reject(self, node: ir.Node, reason: str) -> None:
        self.rejected.append((node.name or node.op_type, reason))
        logger.info("rejected %s %r: %s", node.op_type, node.name, reason)


def _gathers_by_codes(node: ir.Node, hops: int = 3) -> bool:
    """Whether the rows `node` gathers become, within a few elementwise steps (Cast, Add of the offsets),
    the indices of another Gather: codebooks (storage/codebook.py), whose codes are not a quantized table."""
    frontier = [node.outputs[0]]
    for _ in range(hops):
        following = []
        for value in frontier:
            for user, index in value.uses():
                if user.op_type == "Gather" and index == 1:
                    return True
                if user.op_type in ("Cast", "Add", "Reshape", "Flatten"):
                    following.extend(user.outputs)
        frontier = following
    return False


def _trace_to_graph_input(value: ir.Value | None) -> ir.Value | None:
    """Follow shape-only producers back to a graph input; None if the ids are computed."""
    while value is not None and not value.is_graph_input():
        producer = value.producer()
        if producer is None or producer.op_type not in _ID_PASSTHROUGH or producer.domain not in ("", "ai.onnx"):
            return None
        value = producer.inputs[0]
    return value


_SCALES = "scales of a block-quantized lookup (standard-opset form)"


def _table_of(node: ir.Node) -> ir.Value | None:
    data = node.inputs[0]
    if data is None or data.const_value is None or not data.is_initializer():
        return None
    return data


def _constants(node: ir.Node, first: int) -> bool:
    return all(v is None or v.const_value is not None for v in node.inputs[first:])


def _lookup_of(node: ir.Node, search: EmbeddingSearch):
    """(table, output, nodes, storage) when `node` is a row lookup of a stored table, else None (logged).

    Which storage formats a lookup may read is the registry's (storage.registry.recognise); what is left
    are our own outputs' index and code tables."""
    contrib = node.op_type == "GatherBlockQuantized" and node.domain == CONTRIB_DOMAIN
    if not contrib and (node.op_type != "Gather" or node.domain not in ("", "ai.onnx")):
        return None
    table = _table_of(node)
    if contrib and (table is None or not _constants(node, 2)):
        search.reject(node, "codes, scales or zero points are not initializers")
        return None
    if table is None:
        search.reject(node, "data is not an initializer")
        return None
    axis = node.attributes.get("axis")
    if not contrib and axis is not None and axis.as_int() != 0:
        search.reject(node, f"gathers along axis {axis.as_int()}, not 0")
        return None
    found = recognise(node, [n for n, _ in node.outputs[0].uses()])
    if found is not None:
        if isinstance(found[1], str):
            search.reject(node, found[1])
            return None
        output, nodes, storage = found[1]
        return table, output, nodes, storage
    dtype, rank = table.const_value.dtype, len(table.const_value.shape)
    if contrib:
        search.reject(node, f"no registered storage reads GatherBlockQuantized with bits={bits_of(node)}")
        return None
    part = part_read_by(table)
    if part is not None:
        return table, node.outputs[0], [node], part
    search.reject(node, f"table is {rank}-D {dtype.name}, not a 2-D float or quantized table")
    return None


def search_word_embedding(graph: ir.Graph, ids_input: str = "input_ids") -> EmbeddingSearch:
    """Every lookup in `graph` sorted into matches, already-factorized lookups and rejections."""
    search = EmbeddingSearch()
    id_inputs = [v for v in graph.inputs if v.name == ids_input]
    if not id_inputs:
        names = [v.name for v in graph.inputs]
        raise ValueError(f"the model has no graph input named {ids_input!r} (inputs: {names}); "
                         "pass the token-id input's name as ids_input")
    ids_value = id_inputs[0]
    other_inputs = []  # lookups fed by another token-id input (decoder_input_ids of a one-file seq2seq export)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.op_type == "EmbedLayerNormalization":
            search.fused.append(node)
        if node.op_type == "GatherElements" and node.domain in ("", "ai.onnx"):
            table = _table_of(node)
            if table is not None and len(table.const_value.shape) == 1 and \
                    _trace_to_graph_input(node.inputs[1]) is ids_value:
                search.factorized.append(node)  # the cluster-id lookup our pass emits
            continue
        found = _lookup_of(node, search)
        if found is None:
            continue
        table, output, nodes, storage = found
        source = _trace_to_graph_input(node.inputs[1])
        if source is not ids_value:
            if source is not None and not isinstance(storage, Part):
                other_inputs.append(EmbeddingMatch(node, table, source, output, nodes, storage))
            search.reject(node, f"indices do not come from the graph input {ids_input!r}")
            continue
        if storage is Part.CLUSTER_IDS:
            search.factorized.append(node)  # a cluster-id table of an older projclust-onnx output
            continue
        if storage is Part.CODES:
            search.standard_quantized.append(node)  # uint8 codes read without DequantizeLinear: builder.py
            continue
        search.matches.append(EmbeddingMatch(node, table, ids_value, output, nodes, storage))
    # The same table read from another graph input (an encoder's and a decoder's ids in one file) is the
    # same word embedding: those lookups are rewritten too.
    tables = {id(m.table) for m in search.matches}
    for match in other_inputs:
        if id(match.table) in tables:
            search.matches.append(match)
            search.rejected = [r for r in search.rejected if r[0] != (match.lookup.name or match.lookup.op_type)]
    # Float tables gathered by the same ids as uint8 codes are the scales of a block-quantized
    # lookup in the standard-opset form, not word embeddings.
    code_ids = {n.inputs[1] for n in search.standard_quantized}
    for match in [m for m in search.matches if m.lookup.inputs[1] in code_ids]:
        search.matches.remove(match)
        search.reject(match.lookup, _SCALES)
    if search.factorized:
        # Lookups that share their ids with a cluster-id lookup are the U tables of a
        # factorized embedding, not word embeddings.
        factorized_ids = {n.inputs[1] for n in search.factorized}
        for match in list(search.matches):
            if match.lookup.inputs[1] in factorized_ids:
                search.matches.remove(match)
                search.reject(match.lookup, "coefficient table of an already factorized embedding")
    # Each match names every lookup of its table (one per If branch), fixed at construction.
    lookups = {}
    for match in search.matches:
        lookups.setdefault(id(match.table), []).append(match.lookup)
    search.matches = [replace(m, lookups=tuple(lookups[id(m.table)])) for m in search.matches]
    return search


def find_word_embedding(graph: ir.Graph, ids_input: str = "input_ids") -> EmbeddingMatch:
    """The single word-embedding lookup of `graph`; ValueError when there is none or several."""
    return search_word_embedding(graph, ids_input).single()
