"""The numeric check run before anything is written.

The rewritten model is compared under ONNX Runtime with the same model whose
table is the factorization's dense reconstruction: the two must agree to within
a bound fitting the table's dtype, on random ids that include 0 and n-1, at
several batch sizes and sequence lengths. Any other difference is a bug in the
rewrite, never an approximation error.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from projclust_onnx.common.threads import session_options
from projclust_onnx.pipeline.model_files import first_line, save_model

TOLERANCE = {ir.DataType.FLOAT: 1e-4, ir.DataType.DOUBLE: 1e-8, ir.DataType.FLOAT16: 2e-2,
             ir.DataType.BFLOAT16: 1e-1}
# (batch, sequence, cached positions): a single decode step with a cache, a prompt without one
# (the merged decoder's other If branch), and a longer step with a cache.
SHAPES = ((1, 1, 3), (2, 17, 0), (3, 64, 5))
_FEEDABLE = ("int", "float", "double", "bool")
# Nodes that quantize activations at run time: a change in the last bit of a float before them can move a
# value across a rounding step, so the reference's outputs themselves jump by a step (dynamic int8 MiniLM:
# 0.0037 on last_hidden_state). Where a graph holds them, the float values that feed the first of them are
# compared with the dtype's bound, and the outputs by cosine against this bound.
# MatMulNBits quantizes its activations to int8 (on CPU) where accuracy_level is 4.
ACTIVATION_QUANTIZERS = frozenset({"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
                                   "QAttention", "DynamicQuantizeLSTM", "QLinearMatMul", "QLinearConv",
                                   "MatMulIntegerToFloat", "QGemm"})
_INT8_ACCURACY_LEVEL = 4
# The outputs' bound there is the reference's own step, measured before the fit (step_bound): twice the
# larger of what rounding-sized noise in the table and a cheap rewrite move it, and never above this.
QUANTIZED_COSINE = 0.999
# Below this the reference steps so far on rounding alone that no rewrite can be told from a wrong one.
MIN_COSINE = 0.9
PROBE_NOISE = 1e-7  # relative to the table's largest value: a float32 rewrite's rounding
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_target_positions", "n_ctx")


RUN_HINT = ("if the model holds fewer positions, put its config.json (max_position_embeddings) beside it; if it "
            "accepts only some sequence lengths (windowed attention), give them with check_lengths "
            "(--check-lengths); an image input's size comes from config.json (vision_config.image_size)")


class ParityError(ValueError):
    """The rewritten model does not reproduce the dense reconstruction."""


@dataclass
class ParityResult:
    max_abs_diff: float
    tolerance: float
    shapes: tuple[tuple[int, ...], ...]
    min_cosine: float | None = None  # outputs after quantized activations, compared by cosine

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "shapes": [list(s) for s in self.shapes], "min_cosine": self.min_cosine}


def check_shapes(max_positions: int | None, lengths=None) -> tuple[tuple[int, int, int], ...]:
    """SHAPES (or, with `lengths`, one shape a length: SHAPES' batches and caches in turn) with sequence + cache
    within the model's `max_positions` (a whisper decoder may hold 64)."""
    shapes = SHAPES if not lengths else tuple((SHAPES[i % len(SHAPES)][0], int(n), SHAPES[i % len(SHAPES)][2])
                                              for i, n in enumerate(lengths))
    if max_positions is None:
        return shapes
    out = []
    for batch, seq, past in shapes:
        past = min(past, max_positions - 1)
        out.append((batch, max(1, min(seq, max_positions - past)), past))
    return tuple(out)


def max_positions_of(model_dir: Path) -> int | None:
    """The smallest position limit config.json states (max_position_embeddings, max_target_positions, ...)."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    configs = [config, *(v for v in config.values() if isinstance(v, dict))]  # text_config, decoder, ...
    limits = [c[k] for c in configs for k in _POSITION_KEYS if isinstance(c.get(k), int) and c[k] > 0]
    return min(limits) if limits else None


def image_dims_of(model_dir: Path) -> dict[str, int]:
    """The image size an image input takes, from config.json (its vision_config or its own keys): channels,
    height and width; empty where the config states none."""
    import json

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    for part in (config.get("vision_config"), config):
        if not isinstance(part, dict) or "image_size" not in part:
            continue
        size = part["image_size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return {"channels": int(part.get("num_channels", 3)), "height": int(height), "width": int(width)}
    return {}


def quantized_activations(model: ir.Model) -> list[ir.Node]:
    """The nodes of `model` (subgraphs included) that quantize activations at run time."""
    return [node for node in ir.traversal.RecursiveGraphIterator(model.graph) if _quantizes_activations(node)]


def _quantizes_activations(node: ir.Node) -> bool:
    if node.op_type in ACTIVATION_QUANTIZERS:
        return True
    if node.op_type == "MatMulNBits":
        level = node.attributes.get("accuracy_level")
        return level is not None and level.as_int() == _INT8_ACCURACY_LEVEL
    return node.op_type == "QuantizeLinear" and node.inputs[0] is not None and node.inputs[0].const_value is None


def float_frontier(model: ir.Model) -> list[str]:
    """Names of the float values of the main graph that feed a quantizing node and are not computed from one:
    the last values that a rewrite upstream changes only by rounding."""
    quantizers = set(quantized_activations(model))
    tainted: set[ir.Value] = set()
    frontier: dict[str, None] = {}
    for node in model.graph:  # topological order
        if node in quantizers:
            for value in node.inputs:
                if value is not None and value not in tainted and value.const_value is None and value.name and \
                        (value.dtype is None or value.dtype.is_floating_point()):
                    frontier[value.name] = None
        if node in quantizers or any(v in tainted for v in node.inputs if v is not None):
            tainted.update(node.outputs)
    return list(frontier)


def check_feedable(model: ir.Model, ids_input: str) -> None:
    """ParityError, before any work, when the check could not feed one of the model's inputs."""
    for value in model.graph.inputs:
        dtype = value.type.dtype if value.type is not None else None
        if dtype is None or not (dtype.is_integer() or dtype.is_floating_point() or dtype == ir.DataType.BOOL):
            raise ParityError(f"input {value.name!r} of type {dtype.name if dtype else 'unknown'} is not supported "
                              "by the parity check, which feeds integer, float and bool tensors")


def _dim(dim, batch: int, seq: int, past: int, image: dict | None = None) -> int:
    """A symbolic dimension's value: batch, past (cached) and sequence lengths, or their sum
    ('past_sequence_length + sequence_length'); encoder lengths differ from decoder lengths; an image's
    channels, height and width from `image` (image_dims_of), else 3 and 224."""
    if isinstance(dim, int):
        return dim
    if dim is None:
        return seq
    if "+" in dim:
        return sum(_dim(part.strip(), batch, seq, past, image) for part in dim.split("+"))
    if dim.strip().isdigit():
        return int(dim)
    name = dim.lower()
    if "batch" in name:
        return batch
    image = image or {}
    if "channel" in name:
        return image.get("channels", 3)
    if "height" in name or "width" in name:
        return image.get("height" if "height" in name else "width", 224)
    if "past" in name:
        return past
    if "encoder" in name:
        return seq + 2
    return seq


def random_feeds(session_inputs, ids_input: str, n_rows: int, batch: int, seq: int,
                 rng: np.random.Generator, past: int = 0, image: dict | None = None) -> dict[str, np.ndarray]:
    """Inputs for one run of a session whose inputs are `session_inputs` (NodeArg list): random ids
    (0 and n-1 included), masks of ones, positions counted from the cache's length, a random
    float KV cache, encoder states and images (of `image`'s size), use_cache_branch = (past > 0), other
    integers zero."""
    feeds = {}
    for spec in session_inputs:
        if not any(f"({kind}" in spec.type for kind in _FEEDABLE):
            raise ParityError(f"input {spec.name!r} of type {spec.type} is not supported by the parity check; "
                              "it feeds integer, float and bool tensors")
        shape = tuple(_dim(d, batch, seq, past, image) for d in spec.shape)
        if "bool" in spec.type:
            feeds[spec.name] = np.full(shape, past > 0, np.bool_)
        elif "float16" in spec.type:
            feeds[spec.name] = (0.5 * rng.standard_normal(shape)).astype(np.float16)
        elif "float" in spec.type or "double" in spec.type:
            feeds[spec.name] = (0.5 * rng.standard_normal(shape)).astype(
                np.float64 if "double" in spec.type else np.float32)
        else:
            dtype = np.int32 if "int32" in spec.type else np.int64
            if spec.name == ids_input or spec.name.endswith("input_ids"):
                ids = rng.integers(0, n_rows, size=shape)
                if ids.size:
                    ids.flat[0], ids.flat[-1] = 0, n_rows - 1
                feeds[spec.name] = ids.astype(dtype)
            elif "mask" in spec.name:
                feeds[spec.name] = np.ones(shape, dtype)
            elif "position" in spec.name and shape:
                positions = past + np.arange(shape[-1])
                feeds[spec.name] = np.broadcast_to(positions, shape).astype(dtype).copy()
            else:
                feeds[spec.name] = np.zeros(shape, dtype)
    return feeds


def check_parity(rewritten: ir.Model, reference: ir.Model, *, ids_input: str, n_rows: int,
                 dtype: ir.DataType, providers: list[str] | None = None, seed: int = 0,
                 workdir: Path | None = None, max_positions: int | None = None,
                 against: str = "the dense reconstruction", cosine_bound: float = QUANTIZED_COSINE,
                 frontier: bool = True, lengths=None, image: dict | None = None) -> ParityResult:
    """Run both models on the same random inputs; raise ParityError past the dtype's bound, taken
    relative to each output's largest magnitude when that is above 1.

    Where the reference quantizes activations, the float values before its first quantizing
    nodes get that bound and the outputs QUANTIZED_COSINE (see ACTIVATION_QUANTIZERS).
    Sequence and cache lengths stay within `max_positions`; `lengths`: the sequence lengths to run at (a
    model's window constraints), `image`: the size of image inputs. The two models are written under
    `workdir` (the output's staging directory, so the output's file system is the only one
    that needs room), else under TMPDIR.
    """
    import onnxruntime as ort

    tolerance = TOLERANCE.get(dtype, 1e-4)
    providers = providers or ["CPUExecutionProvider"]
    rng = np.random.default_rng(seed)
    shapes = check_shapes(max_positions, lengths)
    quantized = bool(quantized_activations(reference))
    names = {v.name for node in rewritten.graph for v in node.outputs}
    frontier = [name for name in float_frontier(reference) if name in names] if quantized and frontier else []
    worst, min_cosine = 0.0, (1.0 if quantized else None)
    with tempfile.TemporaryDirectory(prefix=".projclust-parity-", dir=workdir) as tmp:
        paths = []
        for name, model in (("rewritten", rewritten), ("reference", reference)):
            (Path(tmp) / name).mkdir()
            path = Path(tmp) / name / "model.onnx"
            _save_with_outputs(model, path, frontier)
            paths.append(path)
        sessions = [ort.InferenceSession(str(p), session_options(), providers=providers) for p in paths]
        n_outputs = len(sessions[0].get_outputs()) - len(frontier)
        for batch, seq, past in shapes:
            feeds = random_feeds(sessions[0].get_inputs(), ids_input, n_rows, batch, seq, rng, past, image)
            where = f"at batch={batch}, sequence={seq}, cached={past}; nothing was written"
            try:
                got, want = (s.run(None, feeds) for s in sessions)
            except Exception as err:  # onnxruntime's own exception types
                raise ParityError(f"ONNX Runtime could not run the check's inputs {where} ({first_line(err)}); "
                                  f"{RUN_HINT}") from None
            for i, (name, a, b) in enumerate(zip((o.name for o in sessions[0].get_outputs()), got, want)):
                if not a.size or a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
                    if not np.array_equal(a, b):
                        raise ParityError(f"output {name!r} differs from {against} {where}")
                    continue
                want64 = b.astype(np.float64)
                # Relative to the output's scale: a factorized head sums its products in another order.
                diff = float(np.max(np.abs(a.astype(np.float64) - want64))) / max(1.0, float(np.max(np.abs(want64))))
                if quantized and i < n_outputs and not diff <= tolerance:
                    cosine = _cosine(a.astype(np.float64), want64)
                    if not cosine >= cosine_bound:
                        raise ParityError(
                            f"output {name!r} has cosine {cosine:.6f} < {cosine_bound:.6f} with {against} (the "
                            f"model quantizes activations, so its outputs are compared by cosine) {where}")
                    min_cosine = min(min_cosine, cosine)
                    continue
                if not np.isfinite(diff) or diff > tolerance:
                    what = "output" if i < n_outputs else "value (before the quantized activations)"
                    raise ParityError(
                        f"{what} {name!r} differs from {against} by {diff:.3g} (relative to its "
                        f"largest value, when above 1) > {tolerance:g} {where}")
                worst = max(worst, diff)
    return ParityResult(worst, tolerance, shapes, min_cosine)


def image_inputs(model: ir.Model) -> list[ir.Value]:
    """The model's image inputs (4-D floats: CLIP's pixel_values), whose size the check takes from config.json."""
    return [v for v in model.graph.inputs if v.shape is not None and len(v.shape) == 4 and v.type is not None
            and v.type.dtype.is_floating_point()]


def probe_image_inputs(path: Path, *, ids_input: str, n_rows: int, max_positions: int | None = None, lengths=None,
                       image: dict | None = None, seed: int = 0) -> None:
    """Run a model with image inputs (image_inputs) once at each of the check's shapes before any fit, so that
    inputs it cannot take are refused there (ParityError) and not after minutes of fitting. Callers load no
    text model here: its inputs are the check's own."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    except Exception:  # a model ONNX Runtime cannot load is refused by the plan's own checks, with their words
        return
    rng = np.random.default_rng(seed)
    for batch, seq, past in check_shapes(max_positions, lengths):
        feeds = random_feeds(session.get_inputs(), ids_input, n_rows, batch, seq, rng, past, image)
        try:
            session.run(None, feeds)
        except Exception as err:  # onnxruntime's own exception types
            raise ParityError(f"ONNX Runtime could not run {Path(path).name} on the check's inputs at batch={batch}, "
                              f"sequence={seq}, cached={past}, before any fit ({first_line(err)}); {RUN_HINT}") \
                from None


def reference_step(model: ir.Model, table: np.ndarray, *, ids_input: str, heads: bool, seed: int = 0,
                   max_positions: int | None = None, workdir: Path | None = None, analysis=None, lengths=None,
                   image: dict | None = None) -> float:
    """1 - the smallest output cosine between `model` reading `table` and reading `table` plus rounding-sized
    noise (PROBE_NOISE): how far a model that quantizes its activations steps on its own. `analysis`: the
    model's WordTableAnalysis, bound to each copy instead of searching it again."""
    from projclust_onnx.passes import DensifyEmbeddingPass, with_cleanup

    rng = np.random.default_rng(seed)
    table32 = np.asarray(table, dtype=np.float32)
    noise = PROBE_NOISE * float(np.max(np.abs(table32)) or 1.0) * rng.standard_normal(table32.shape)
    models = []
    for values in (table32, table32 + noise.astype(np.float32)):
        copy = ir.from_proto(ir.to_proto(model))
        with_cleanup(DensifyEmbeddingPass(values, ids_input, heads=heads, analysis=analysis))(copy)
        models.append(copy)
    result = check_parity(models[1], models[0], ids_input=ids_input, n_rows=table32.shape[0],
                          dtype=ir.DataType.FLOAT, seed=seed, workdir=workdir, max_positions=max_positions,
                          cosine_bound=-1.0, frontier=False, lengths=lengths, image=image)
    return 1.0 - result.min_cosine


def step_bound(*steps: float) -> float:
    """The outputs' cosine bound for a model whose reference steps by `steps` (1 - cosine); ParityError
    when that leaves less than MIN_COSINE."""
    bound = min(QUANTIZED_COSINE, 1.0 - 2.0 * max(steps))
    if bound < MIN_COSINE:
        raise ParityError(f"the model quantizes its activations so coarsely that its outputs move to cosine "
                          f"{1 - max(steps):.4f} on rounding alone (a change of {PROBE_NOISE:g} of the table's largest "
                          f"value); no rewrite can be checked against it: compress the float model, then quantize")
    return bound


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest cosine between matching rows (last axis) of a and b; 1 where both rows are zero."""
    a2, b2 = a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1), b.reshape(-1, b.shape[-1]) if b.ndim \
        else b.reshape(1, 1)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    dots = np.sum(a2 * b2, axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.all(a2 == b2, axis=1), 1.0, 0.0))
    return float(np.min(cos)) if cos.size else 1.0


def _save_with_outputs(model: ir.Model, path: Path, names: list[str]) -> None:
    """Save `model` with the values named `names` added as graph outputs (the graph is left as it was)."""
    if not names:
        save_model(model, path)
        return
    values = {v.name: v for node in model.graph for v in node.outputs}
    added = [values[name] for name in names if name in values and values[name] not in model.graph.outputs]
    model.graph.outputs.extend(added)
    try:
        save_model(model, path)
    finally:
        for value in added:
            model.graph.outputs.remove(value)
