"""Tiny transformer-like ONNX models built with onnx.helper, one per structural case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 10  # what onnxruntime 1.31 reads


def embedding_model(n: int = 40, d: int = 8, *, seed: int = 0, dtype=np.float32, cast: bool = False,
                    reshape: bool = False, position: bool = True, token_type: bool = False, tied: bool = False,
                    second_lookup: bool = False, ids_from_computation: bool = False, opset: int = 17,
                    tied_copy: bool = False, gemm_head: bool = False, stranger: bool = False,
                    ids_name: str = "input_ids", table_name: str = "bert.embeddings.word_embeddings.weight"):
    """input_ids -> [Cast] -> [Reshape] -> Gather(table) (+ position, token-type tables) -> Relu -> output.

    Returns the ModelProto and the word table.
    """
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n, d)).astype(dtype)
    tensor_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits = [], [numpy_helper.from_array(table, table_name)]
    inputs = [helper.make_tensor_value_info(ids_name, TensorProto.INT64, ["batch", "sequence"])]
    ids = ids_name
    if ids_from_computation:
        nodes.append(helper.make_node("Add", [ids, "one"], ["shifted"], name="shift"))
        inits.append(numpy_helper.from_array(np.array(1, np.int64), "one"))
        ids = "shifted"
    if cast:
        nodes.append(helper.make_node("Cast", [ids], ["ids32"], to=TensorProto.INT32, name="cast_ids"))
        ids = "ids32"
    if reshape:
        nodes.append(helper.make_node("Reshape", [ids, "same_shape"], ["ids_r"], name="reshape_ids"))
        inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), "same_shape"))
        ids = "ids_r"
    nodes.append(helper.make_node("Gather", [table_name, ids], ["words"], name="word_lookup"))
    total = "words"
    if position:
        pos_table = rng.standard_normal((64, d)).astype(dtype)
        inits.append(numpy_helper.from_array(pos_table, "position_table"))
        nodes += [
            helper.make_node("Shape", [ids_name], ["ids_shape"], name="ids_shape"),
            helper.make_node("Gather", ["ids_shape", "one_idx"], ["seq_len"], axis=0, name="seq_len"),
            helper.make_node("Range", ["zero_s", "seq_len", "one_s"], ["positions"], name="positions"),
            helper.make_node("Gather", ["position_table", "positions"], ["pos_emb"], name="position_lookup"),
            helper.make_node("Add", [total, "pos_emb"], ["with_pos"], name="add_pos"),
        ]
        inits += [numpy_helper.from_array(np.array(1, np.int64), "one_idx"),
                  numpy_helper.from_array(np.array(0, np.int64), "zero_s"),
                  numpy_helper.from_array(np.array(1, np.int64), "one_s")]
        total = "with_pos"
    if token_type:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "sequence"]))
        inits.append(numpy_helper.from_array(rng.standard_normal((2, d)).astype(dtype), "token_type_table"))
        nodes += [helper.make_node("Gather", ["token_type_table", "token_type_ids"], ["tt_emb"], name="tt_lookup"),
                  helper.make_node("Add", [total, "tt_emb"], ["with_tt"], name="add_tt")]
        total = "with_tt"
    if second_lookup:
        inits.append(numpy_helper.from_array(rng.standard_normal((n, d)).astype(dtype), "other_table"))
        nodes += [helper.make_node("Gather", ["other_table", ids_name], ["other"], name="other_lookup"),
                  helper.make_node("Add", [total, "other"], ["with_other"], name="add_other")]
        total = "with_other"
    nodes.append(helper.make_node("Relu", [total], ["hidden"], name="relu"))
    outputs = [helper.make_tensor_value_info("hidden", tensor_type, ["batch", "sequence", d])]
    if tied:
        nodes += [helper.make_node("Transpose", [table_name], ["table_t"], perm=[1, 0], name="head_t"),
                  helper.make_node("MatMul", ["hidden", "table_t"], ["logits"], name="lm_head")]
        outputs.append(helper.make_tensor_value_info("logits", tensor_type, ["batch", "sequence", n]))
    if tied_copy:  # what Optimum writes for a tied head without accelerate: the transpose as its own initializer
        inits.append(numpy_helper.from_array(np.ascontiguousarray(table.T), "onnx::MatMul_999"))
        nodes.append(helper.make_node("MatMul", ["hidden", "onnx::MatMul_999"], ["logits"], name="lm_head"))
        outputs.append(helper.make_tensor_value_info("logits", tensor_type, ["batch", "sequence", n]))
    if gemm_head:  # Gemm(hidden rows, table, transB=1) + a bias, as a 2-D head
        inits += [numpy_helper.from_array(np.array([-1, d], np.int64), "rows_shape"),
                  numpy_helper.from_array(rng.standard_normal(n).astype(dtype), "head_bias")]
        nodes += [helper.make_node("Reshape", ["hidden", "rows_shape"], ["hidden_rows"], name="head_rows"),
                  helper.make_node("Gemm", ["hidden_rows", table_name, "head_bias"], ["logits"], transB=1,
                                   name="lm_head_gemm")]
        outputs.append(helper.make_tensor_value_info("logits", tensor_type, ["rows", n]))
    if stranger:  # some other reader of the table: neither a lookup nor a head
        nodes.append(helper.make_node("ReduceSum", [table_name], ["table_sum"], keepdims=0, name="table_sum"))
        outputs.append(helper.make_tensor_value_info("table_sum", tensor_type, []))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model, table


def write_model_dir(directory: Path, model: onnx.ModelProto, external: bool = False) -> Path:
    """An ONNX model directory (model.onnx plus a config.json) as Optimum lays one out."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx_data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    (directory / "config.json").write_text('{"model_type": "bert"}\n')
    return path


def merged_decoder_model(n: int = 40, d: int = 8, *, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """A merged decoder's shape (decoder_model_merged.onnx): If(use_cache_branch) whose two branches each look up
    the word table (an initializer of the main graph) by input_ids; then-branch Relu, else-branch Neg.

    Returns the ModelProto and the word table.
    """
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n, d)).astype(np.float32)
    out = helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", d])

    def branch(name: str, op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Gather", ["embed_tokens.weight", "input_ids"], [f"{name}_rows"],
                                                   name=f"/{name}/embed_tokens/Gather"),
                                  helper.make_node(op, [f"{name}_rows"], ["hidden"], name=f"/{name}/act")],
                                 name, [], [out])

    node = helper.make_node("If", ["use_cache_branch"], ["hidden"], name="optimum::if",
                            then_branch=branch("with_past", "Relu"), else_branch=branch("no_past", "Neg"))
    graph = helper.make_graph([node], "merged", [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])], [out],
        [numpy_helper.from_array(table, "embed_tokens.weight")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model, table
