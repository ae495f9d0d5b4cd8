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
SHAPES = ((1, 1), (2, 17), (3, 64))


class ParityError(ValueError):
    """The rewritten model does not reproduce the dense reconstruction."""


@dataclass
class ParityResult:
    max_abs_diff: float
    tolerance: float
    shapes: tuple[tuple[int, int], ...]

    def to_dict(self) -> dict:
        return {"max_abs_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "shapes": [list(s) for s in self.shapes]}


def check_feedable(model: ir.Model, ids_input: str) -> None:
    """ParityError, before any work, when the check could not feed one of the model's inputs."""
    for value in model.graph.inputs:
        dtype = value.type.dtype if value.type is not None else None
        if dtype is None or not dtype.is_integer():
            raise ParityError(f"input {value.name!r} of type {dtype.name if dtype else 'unknown'} is not supported "
                              "by the parity check, which feeds token-level integer inputs only")


def random_feeds(session_inputs, ids_input: str, n_rows: int, batch: int, seq: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs for one run of a session whose inputs are `session_inputs` (NodeArg list):
    random ids (0 and n-1 included), an attention mask of ones, other integer inputs zero."""
    feeds = {}
    for spec in session_inputs:
        if "int" not in spec.type:
            raise ParityError(f"input {spec.name!r} of type {spec.type} is not supported by the parity check; "
                              "it feeds token-level integer inputs only")
        dtype = np.int32 if "int32" in spec.type else np.int64
        shape = (batch, seq) if len(spec.shape) == 2 else (batch,) * len(spec.shape)
        if spec.name == ids_input:
            ids = rng.integers(0, n_rows, size=shape)
            ids.flat[0], ids.flat[-1] = 0, n_rows - 1
            feeds[spec.name] = ids.astype(dtype)
        elif "mask" in spec.name:
            feeds[spec.name] = np.ones(shape, dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype)
    return feeds


def check_parity(rewritten: ir.Model, reference: ir.Model, *, ids_input: str, n_rows: int,
                 dtype: ir.DataType, providers: list[str] | None = None, seed: int = 0,
                 workdir: Path | None = None) -> ParityResult:
    """Run both models on the same random inputs; raise ParityError past the dtype's bound.

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
        for batch, seq in SHAPES:
            feeds = random_feeds(sessions[0].get_inputs(), ids_input, n_rows, batch, seq, rng)
            got, want = (s.run(None, feeds) for s in sessions)
            for name, a, b in zip((o.name for o in sessions[0].get_outputs()), got, want):
                diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                if not np.isfinite(diff) or diff > tolerance:
                    raise ParityError(
                        f"output {name!r} differs from the dense reconstruction by {diff:.3g} > {tolerance:g} "
                        f"at batch={batch}, sequence={seq}; nothing was written")
                worst = max(worst, diff)
    return ParityResult(worst, tolerance, SHAPES)
