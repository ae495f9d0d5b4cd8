"""Every exported text model, whole: tiny random checkpoints exported by Optimum (without accelerate),
compressed as a directory, loaded by the matching ORTModel class, and run or made to generate.

gpt2 runs with the fast tests; the other architectures are slow (an export and a load each).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny_checkpoints import HIDDEN, VOCAB, build_checkpoint, export_checkpoint

from projclust_onnx import ProjClustCompressor, ProjClustConfig

ORT_CLASSES = {"gpt2": "ORTModelForCausalLM", "llama": "ORTModelForCausalLM", "llama-untied": "ORTModelForCausalLM",
               "qwen2": "ORTModelForCausalLM", "mistral": "ORTModelForCausalLM", "phi": "ORTModelForCausalLM",
               **dict.fromkeys(("bert", "roberta", "distilbert", "xlm-roberta", "albert", "electra", "deberta-v2",
                                "mpnet"), "ORTModelForMaskedLM"),
               "t5": "ORTModelForSeq2SeqLM", "bart": "ORTModelForSeq2SeqLM"}
UNTIED = {"llama-untied", "mistral", "phi"}  # their own lm_head matrix: not a copy of the table
SLOW = pytest.mark.slow
ARCHITECTURES = ["gpt2", *(pytest.param(a, marks=SLOW) for a in ORT_CLASSES if a != "gpt2")]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """architecture -> its Optimum export directory, made once per module."""
    made = {}

    def get(architecture: str) -> Path:
        if architecture not in made:
            made[architecture] = export_checkpoint(architecture, tmp_path_factory.mktemp(architecture))
        return made[architecture]

    return get


def table_copies(directory: Path) -> int:
    return sum(1 for f in directory.glob("*.onnx") for t in onnx.load(str(f)).graph.initializer
               if sorted(t.dims) == sorted((VOCAB, HIDDEN)))


def onnx_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.onnx"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "projclust_onnx.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_export_directory_is_compressed_whole_and_loads_in_its_ortmodel_class(architecture, exports, tmp_path):
    import optimum.onnxruntime as ortm
    import torch

    src = exports(architecture)
    out = tmp_path / "out"
    done = run_cli("compress", "--model", str(src), "--output", str(out), "--compression", "0.4", "--clusters", "4",
                   "-q")
    assert done.returncode == 0, done.stderr
    untied_heads = 1 if architecture in UNTIED else 0
    copies = table_copies(src) - untied_heads
    assert copies >= 1 and table_copies(out) == untied_heads  # tied: no 5000 x 64 or 64 x 5000 left anywhere
    assert onnx_bytes(src) - onnx_bytes(out) >= 0.35 * copies * VOCAB * HIDDEN * 4
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in out.iterdir()
                                                           if not p.name.startswith("projclust_"))

    model = getattr(ortm, ORT_CLASSES[architecture]).from_pretrained(out)
    ids = torch.tensor([[5, 17, 42, 99, 4999]])
    if ORT_CLASSES[architecture] == "ORTModelForMaskedLM":
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
        logits = model(**{k: v for k, v in inputs.items() if k in model.input_names}).logits
        assert tuple(logits.shape) == (1, 5, VOCAB) and torch.isfinite(logits).all()
    else:
        generated = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        assert generated.shape[1] == (9 if ORT_CLASSES[architecture].endswith("Seq2SeqLM") else 5 + 8)


def test_generation_matches_the_pytorch_model_holding_the_reconstruction(exports, tmp_path):
    """Greedy tokens from the compressed export = greedy tokens from the checkpoint whose tied table is
    the dense reconstruction (lookup and head both): the rewrite computes what the factors stand for."""
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM

    from projclust_onnx.storage.factorization import EmbeddingFactorization  # noqa: F401  (the saved factors' type)

    src = exports("gpt2")
    report = ProjClustCompressor.from_pretrained(src).compress(
        tmp_path / "out", ProjClustConfig(compression=0.4, n_clusters=4, n_init=1), verbose=False)
    assert report.heads and report.untied_head is None
    ours = ORTModelForCausalLM.from_pretrained(tmp_path / "out")

    import onnx_ir as ir
    from projclust_onnx.passes.factorize_head import ClusterOrder  # rebuild the table from the written factors

    model = ir.load(tmp_path / "out" / "model.onnx")
    inits = {name: v.const_value.numpy() for name, v in model.graph.initializers.items()}
    labels = inits["projclust/cluster_ids"].astype(np.int64)
    k = int(labels.max()) + 1
    order = ClusterOrder(labels, k)
    dense = np.empty((VOCAB, HIDDEN), np.float32)
    for c, rows in enumerate(order.members):
        if len(rows):
            dense[rows] = inits[f"projclust/U/cluster{c}"] @ inits[f"projclust/branch{c}/V"]

    reference = transformers.GPT2LMHeadModel.from_pretrained(build_checkpoint("gpt2", tmp_path / "hf"))
    with torch.no_grad():
        reference.transformer.wte.weight.copy_(torch.from_numpy(dense))  # tied: the head reads it too
    ids = torch.tensor([[5, 17, 42, 99, 4999], [1, 2, 3, 4, 5]])
    want = reference.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    got = ours.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)


@SLOW
def test_untied_decoder_compresses_the_lookup_and_leaves_its_own_head(exports, tmp_path):
    src = exports("llama-untied")
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "out", ProjClustConfig(
        compression=0.4, n_clusters=4, n_init=1), verbose=False)
    assert not report.heads and report.untied_head is None and report.table_copies == 1
    heads = [t for t in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.initializer
             if tuple(t.dims) == (HIDDEN, VOCAB)]
    assert len(heads) == 1  # lm_head.weight^T, a separate matrix in an untied model: not ours to touch


@pytest.mark.slow  # about 10 s: kept out of the 5-minute suite, run by CI
def test_tied_head_with_4_bit_factors_generates_and_a_target_ratio_is_refused(exports, tmp_path):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    src = exports("gpt2")
    done = run_cli("compress", "--model", str(src), "--output", str(tmp_path / "q4"), "--compression", "0.8",
                   "--clusters", "4", "--quantize", "int4", "--block-size", "16", "-q")
    assert done.returncode == 0, done.stderr
    graph = onnx.load(str(tmp_path / "q4" / "model.onnx")).graph
    assert "MatMulNBits" in {n.op_type for n in graph.node} and table_copies(tmp_path / "q4") == 0
    assert onnx_bytes(src) - onnx_bytes(tmp_path / "q4") >= 0.75 * 2 * VOCAB * HIDDEN * 4
    model = ORTModelForCausalLM.from_pretrained(tmp_path / "q4")
    assert model.generate(torch.tensor([[5, 17, 42]]), max_new_tokens=8, min_new_tokens=8).shape == (1, 11)

    done = run_cli("compress", "--model", str(src), "--output", str(tmp_path / "out"), "--target-ratio", "4", "-q")
    assert done.returncode == 2 and "cannot be used with a tied LM head" in done.stderr
    assert "set --head to 'keep'" in done.stderr and not (tmp_path / "out").exists()


@SLOW
def test_one_file_seq2seq_export_rewrites_the_decoder_lookup_of_the_same_table(tmp_path):
    """optimum's --monolith t5: the encoder reads the table from input_ids, the decoder from decoder_input_ids."""
    import onnxruntime as ort
    from optimum.exporters.onnx import main_export

    from projclust_onnx.pipeline.compressor import quiet_third_party

    checkpoint = build_checkpoint("t5", tmp_path / "hf")
    with quiet_third_party():
        main_export(str(checkpoint), output=tmp_path / "onnx", task="text2text-generation", monolith=True,
                    library_name="transformers", do_validation=False)
    assert [p.name for p in (tmp_path / "onnx").glob("*.onnx")] == ["model.onnx"]
    report = ProjClustCompressor.from_pretrained(tmp_path / "onnx").compress(
        tmp_path / "out", ProjClustConfig(compression=0.4, n_clusters=4, n_init=1), verbose=False)
    assert report.files[0]["lookups"] == 2 and len(report.heads) == 1
    assert table_copies(tmp_path / "out") == 0
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 17, 4999]])
    feeds = {i.name: (ids if "input_ids" in i.name else np.ones_like(ids)) for i in session.get_inputs()}
    assert session.run(["logits"], feeds)[0].shape == (1, 3, VOCAB)


def test_inspect_shows_the_head_and_every_table_copy(exports):
    done = run_cli("inspect", "--model", str(exports("gpt2")), "--compression", "0.4", "--clusters", "4")
    assert done.returncode == 0, done.stderr
    assert "MatMul '/lm_head/MatMul' (copy) (rewritten with the same factors)" in done.stdout
    assert "2 in 1 file(s)" in done.stdout and "index maps" in done.stdout
