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

from projclust_onnx.model_files import save_model
from projclust_onnx.threads import session_options

TOLERANCE = {ir.DataType.FLOAT: 1e-4, ir.DataType.DOUBLE: 1e-8, ir.DataType.FLOAT16: 2e-2,
             ir.DataType.BFLOAT16: 1e-1}
# (batch, sequence, cached positions): a single decode step with a cache, a prompt without one
# (the merged decoder's other If branch), and a longer step with a cache.
SHAPES = ((1, 1, 3), (2, 17, 0), (3, 64, 5))
_FEEDABLE = ("int", "float", "double", "bool")


class ParityError(ValueError):
    """The rewritten model does not reproduce the dense reconstruction."""


@dataclass
class ParityResult:
    max_abs_diff: float
    tolerance: float
    shapes: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "shapes": [list(s) for s in self.shapes]}


def check_feedable(model: ir.Model, ids_input: str) -> None:
    """ParityError, before any work, when the check could not feed one of the model's inputs."""
    for value in model.graph.inputs:
        dtype = value.type.dtype if value.type is not None else None
        if dtype is None or not (dtype.is_integer() or dtype.is_floating_point() or dtype == ir.DataType.BOOL):
            raise ParityError(f"input {value.name!r} of type {dtype.name if dtype else 'unknown'} is not supported "
                              "by the parity check, which feeds integer, float and bool tensors")


def _dim(dim, batch: int, seq: int, past: int) -> int:
    """A symbolic dimension's value: batch, past (cached) and sequence lengths, or their sum
    ('past_sequence_length + sequence_length'); encoder lengths differ from decoder lengths."""
    if isinstance(dim, int):
        return dim
    if dim is None:
        return seq
    if "+" in dim:
        return sum(_dim(part.strip(), batch, seq, past) for part in dim.split("+"))
    if dim.strip().isdigit():
        return int(dim)
    name = dim.lower()
    if "batch" in name:
        return batch
    if "past" in name:
        return past
    if "encoder" in name:
        return seq + 2
    return seq


def random_feeds(session_inputs, ids_input: str, n_rows: int, batch: int, seq: int,
                 rng: np.random.Generator, past: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one run of a session whose inputs are `session_inputs` (NodeArg list): random ids
    (0 and n-1 included), masks of ones, positions counted from the cache's length, a random
    float KV cache and encoder states, use_cache_branch = (past > 0), other integers zero."""
    feeds = {}
    for spec in session_inputs:
        if not any(f"({kind}" in spec.type for kind in _FEEDABLE):
            raise ParityError(f"input {spec.name!r} of type {spec.type} is not supported by the parity check; "
                              "it feeds integer, float and bool tensors")
        shape = tuple(_dim(d, batch, seq, past) for d in spec.shape)
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
                 workdir: Path | None = None) -> ParityResult:
    """Run both models on the same random inputs; raise ParityError past the dtype's bound, taken
    relative to each output's largest magnitude when that is above 1.

    The two models are written under `workdir` (the output's staging directory, so the
    output's file system is the only one that needs room), else under TMPDIR.
    """
    import onnxruntime as ort

    tolerance = TOLERANCE.get(dtype, 1e-4)
    providers = providers or ["CPUExecutionProvider"]
    rng = np.random.default_rng(seed)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix=".projclust-parity-", dir=workdir) as tmp:
        paths = []
        for name, model in (("rewritten", rewritten), ("reference", reference)):
            (Path(tmp) / name).mkdir()
            path = Path(tmp) / name / "model.onnx"
            save_model(model, path)
            paths.append(path)
        sessions = [ort.InferenceSession(str(p), session_options(), providers=providers) for p in paths]
        for batch, seq, past in SHAPES:
            feeds = random_feeds(sessions[0].get_inputs(), ids_input, n_rows, batch, seq, rng, past)
            got, want = (s.run(None, feeds) for s in sessions)
            for name, a, b in zip((o.name for o in sessions[0].get_outputs()), got, want):
                if not a.size or a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
                    if not np.array_equal(a, b):
                        raise ParityError(f"output {name!r} differs from the dense reconstruction at batch={batch}, "
                                          f"sequence={seq}, cached={past}; nothing was written")
                    continue
                want64 = b.astype(np.float64)
                # Relative to the output's scale: a factorized head sums its products in another order.
                diff = float(np.max(np.abs(a.astype(np.float64) - want64))) / max(1.0, float(np.max(np.abs(want64))))
                if not np.isfinite(diff) or diff > tolerance:
                    raise ParityError(
                        f"output {name!r} differs from the dense reconstruction by {diff:.3g} (relative to its "
                        f"largest value, when above 1) > {tolerance:g} at batch={batch}, sequence={seq}, "
                        f"cached={past}; nothing was written")
                worst = max(worst, diff)
    return ParityResult(worst, tolerance, SHAPES)
