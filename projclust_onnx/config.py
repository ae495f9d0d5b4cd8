"""ProjClustConfig: every choice of one compression, saved beside the model it produced."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from projclust_onnx.budget import rank_for_budget

CONFIG_NAME = "projclust_config.json"
METHODS = ("projclust", "svd")
DEFAULT_CLUSTERS = 5


@dataclass
class ProjClustConfig:
    """How to compress a word embedding.

    Attributes:
        method: "projclust" (k subspaces) or "svd" (one subspace: k = 1).
        n_clusters: k; None means 5 for projclust and 1 for svd.
        compression: fraction of the table's parameters to remove (0.4 = 40% smaller),
            converted to the largest rank that fits (see budget.rank_for_budget).
        rank: j, given directly instead of compression.
        layout: runtime subgraph, "grouped" or "onehot" (see passes.factorize_embedding).
        init, n_init, anneal_steps, max_iter, tol, z: ProjectiveClustering settings.
        seed: random_state of the clustering and of the parity check's inputs.
        device: where the clustering runs: "auto", "cpu" or "cuda".
        ids_input: name of the token-id graph input.
        calibration_text: text files whose token frequencies weight the rows.
        calibration_dataset: a datasets name "NAME[:CONFIG][@SPLIT]" or CSV/JSON file for the same.
        calibration_column: the text column of calibration_dataset.
        calibration_smoothing: pseudo-count added to every token's frequency, so that
            tokens unseen in calibration still count: weight = count + smoothing.
        special_token_weight: each of the tokenizer's special tokens ([CLS], [SEP], ...)
            weighs this many times the rest of the table together, so the rows that
            occur in every input are fit (nearly) exactly; 0 weighs them like any row.
    """

    method: str = "projclust"
    n_clusters: int | None = None
    compression: float | None = 0.4
    rank: int | None = None
    layout: str = "grouped"
    init: str = "kmeans"
    n_init: int = 10
    anneal_steps: int = 8
    max_iter: int = 30
    tol: float = 1e-4
    z: float = 2.0
    seed: int = 0
    device: str = "auto"
    ids_input: str = "input_ids"
    calibration_text: list[str] = field(default_factory=list)
    calibration_dataset: str | None = None
    calibration_column: str = "text"
    calibration_smoothing: float = 1.0
    special_token_weight: float = 30.0

    def __post_init__(self) -> None:
        from projclust_onnx.passes.factorize_embedding import LAYOUTS

        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} must be one of {METHODS}")
        if self.n_clusters is None:
            self.n_clusters = 1 if self.method == "svd" else DEFAULT_CLUSTERS
        if self.method == "svd" and self.n_clusters != 1:
            raise ValueError(f"method='svd' is the one-cluster case; n_clusters={self.n_clusters} must be 1 "
                             "(or use method='projclust')")
        if self.n_clusters < 1:
            raise ValueError(f"n_clusters={self.n_clusters} must be >= 1")
        if self.rank is not None:
            self.compression = None
            if self.rank < 1:
                raise ValueError(f"rank={self.rank} must be >= 1")
        elif self.compression is None:
            raise ValueError("give compression (e.g. 0.4) or rank")
        elif not 0.0 < self.compression < 1.0:
            raise ValueError(f"compression={self.compression} must lie in (0, 1), e.g. 0.4 for a 40% smaller table")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r} must be one of {LAYOUTS}")
        if self.special_token_weight < 0:
            raise ValueError(f"special_token_weight={self.special_token_weight} must be >= 0")
        if self.calibration_smoothing < 0:
            raise ValueError(f"calibration_smoothing={self.calibration_smoothing} must be >= 0")
        self.calibration_text = [str(p) for p in self.calibration_text]

    def rank_for(self, n_rows: int, dim: int, param_bytes: int = 4) -> int:
        """The rank j this config gives a table of n_rows x dim."""
        if self.rank is not None:
            if self.rank >= dim:
                raise ValueError(f"rank={self.rank} must be < the table's dim={dim}")
            return self.rank
        return rank_for_budget(n_rows, dim, self.n_clusters, self.compression, param_bytes)

    @property
    def uses_calibration(self) -> bool:
        return bool(self.calibration_text or self.calibration_dataset)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProjClustConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ProjClustConfig keys {sorted(unknown)}; known keys: {sorted(known)}")
        return cls(**data)

    def save_pretrained(self, save_dir: str | Path) -> Path:
        path = Path(save_dir) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ProjClustConfig:
        """Read projclust_config.json from a directory (or the file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise ValueError(f"{path} not found; a compressed model directory holds {CONFIG_NAME}")
        return cls.from_dict(json.loads(path.read_text()))
