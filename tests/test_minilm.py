"""End to end on the real bundled all-MiniLM-L6-v2: export, compress, load as a server would."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import shared_file
from projclust_onnx.passes import find_word_embedding

from projclust_onnx import EmbeddingFactorization, ProjClustCompressor, ProjClustConfig
from projclust_onnx.pipeline.model_files import file_sha256, load_model

pytestmark = pytest.mark.slow
FAST = dict(n_init=2, anneal_steps=2, max_iter=5)


def dense_reference_session(onnx_dir, compressed_dir, tmp_path):
    """The original model with its table replaced by the compressed model's dense reconstruction."""
    model = load_model(onnx_dir / "model.onnx")
    table = find_word_embedding(model.graph).table
    compressed = onnx.load(str(compressed_dir / "model.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in compressed.graph.initializer}
    k = sum(1 for name in inits if name.endswith("/V") and name.startswith("projclust/branch"))
    fact = EmbeddingFactorization(labels=inits["projclust/cluster_ids"], U=inits["projclust/U"],
                                  V=np.stack([inits[f"projclust/branch{c}/V"] for c in range(k)]))
    table.const_value = ir.tensor(fact.reconstruct(), name=table.name)
    ir.save(model, tmp_path / "dense.onnx")
    return ort.InferenceSession(str(tmp_path / "dense.onnx"), providers=["CPUExecutionProvider"])


def test_cli_compresses_feature_extraction_and_ortmodel_loads_it(exported, tmp_path):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    src = exported["feature-extraction"]
    digest = file_sha256(src / "model.onnx")
    out = tmp_path / "OUT"
    done = subprocess.run([sys.executable, "-m", "projclust_onnx.cli", "compress", "--model", str(src), "--output",
                           str(out), "--compression", "0.4", "--clusters", "5", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "40.2% fewer" in done.stdout and "parity" in done.stdout
    assert file_sha256(src / "model.onnx") == digest
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    shapes = [tuple(t.dims) for t in onnx.load(str(out / "model.onnx")).graph.initializer]
    assert (30522, 384) not in shapes
    report = ProjClustConfig.from_pretrained(out)
    assert report.n_clusters == 5
    params = sum(int(np.prod(s)) for s in shapes if s and s[0] in (30522,) and len(s) == 2)
    params += sum(int(np.prod(s)) for s in shapes if len(s) == 2 and s[1] == 384 and s[0] < 384)
    assert params <= 0.6 * 30522 * 384  # U and the k branch matrices (cluster ids aside)

    model = ORTModelForFeatureExtraction.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["the tea was lovely", "terrible packaging, arrived broken"], padding=True,
                      return_tensors="np")
    got = model(**batch).last_hidden_state
    want = dense_reference_session(src, out, tmp_path).run(None, dict(batch))[0]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_text_classification_export_compresses_and_loads(exported, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification

    src = exported["text-classification"]
    out = tmp_path / "cls"
    report = ProjClustCompressor.from_pretrained(src).compress(out, ProjClustConfig(compression=0.5, n_clusters=3,
                                                                                    **FAST))
    assert report.parity_max_abs_diff <= 1e-4
    model = ORTModelForSequenceClassification.from_pretrained(out)
    ids = np.array([[101, 2023, 2003, 2204, 102]])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    logits = model(**feeds).logits
    want = dense_reference_session(src, out, tmp_path).run(None, feeds)[0]
    np.testing.assert_allclose(np.asarray(logits), want, atol=1e-4)


def test_calibration_weights_are_counted_and_reported(exported, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("It is a truth universally acknowledged.\nEmma Woodhouse, handsome, clever, and rich.\n")
    report = ProjClustCompressor.from_pretrained(exported["feature-extraction"]).compress(
        tmp_path / "out", ProjClustConfig(compression=0.4, n_clusters=2, calibration_text=[str(text)], **FAST))
    assert report.calibration_tokens > 10
    assert ProjClustConfig.from_pretrained(tmp_path / "out").calibration_text == [str(text)]


def mean_pooled(session, tokenizer, texts):
    out = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=128, return_tensors="np")
        feeds = {i.name: batch[i.name] for i in session.get_inputs()}
        hidden = session.run(None, feeds)[0]
        mask = batch["attention_mask"][..., None]
        out.append((hidden * mask).sum(1) / mask.sum(1))
    return np.concatenate(out)


def test_sentence_embeddings_stay_close_on_finefoods(exported, tmp_path):
    from transformers import AutoTokenizer

    path = shared_file("finefoods", "test.csv")
    with path.open(newline="") as f:
        texts = [row["text"] for _, row in zip(range(300), csv.DictReader(f))]
    src = exported["feature-extraction"]
    ProjClustCompressor.from_pretrained(src).compress(tmp_path / "pc", ProjClustConfig(compression=0.4, n_clusters=5))
    tokenizer = AutoTokenizer.from_pretrained(src)
    original = mean_pooled(ort.InferenceSession(str(src / "model.onnx")), tokenizer, texts)
    compressed = mean_pooled(ort.InferenceSession(str(tmp_path / "pc" / "model.onnx")), tokenizer, texts)
    cosine = (original * compressed).sum(1) / np.linalg.norm(original, axis=1) / np.linalg.norm(compressed, axis=1)
    assert cosine.mean() >= 0.98


def test_quick_start_main_job_is_clean(tmp_path):
    """The README's main job, as a newcomer runs it: the bundled model, phases announced, no third-party noise."""
    done = subprocess.run([sys.executable, "-m", "projclust_onnx.cli", "compress", "--overwrite", "--output",
                           str(tmp_path / "projclust-output")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "No --model given: using sentence-transformers/all-MiniLM-L6-v2" in done.stderr
    assert "exporting" in done.stderr and "clustering 30522 x 384 rows" in done.stderr
    for noise in ("torch_dtype", "TracerWarning", "accelerate", "Traceback"):
        assert noise not in done.stderr
    assert "40.2% fewer" in done.stdout


def finefood_texts(count=300):
    path = shared_file("finefoods", "test.csv")
    with path.open(newline="") as f:
        return [row["text"] for _, row in zip(range(count), csv.DictReader(f))]


def test_ten_times_smaller_with_int4_factors(exported, tmp_path):
    """Issue 8: 4-bit U at a 90% byte budget; the file's embedding part is at most 10% of the fp32 table. Issue 15:
    the chooser at 10x and 16x (codebooks) keeps the sentence embeddings at cosine 0.985 or more."""
    from transformers import AutoTokenizer

    austen = shared_file("austen.txt")
    src = exported["feature-extraction"]
    done = subprocess.run([sys.executable, "-m", "projclust_onnx.cli", "compress", "--model", str(src), "--output",
                           str(tmp_path / "q4"), "--compression", "0.9", "--quantize", "int4", "--clusters", "5",
                           "--calibration-text", str(austen), "--quiet"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    table = 30522 * 384 * 4
    rest = (src / "model.onnx").stat().st_size - table
    assert (tmp_path / "q4" / "model.onnx").stat().st_size - rest <= 0.10 * table

    tokenizer = AutoTokenizer.from_pretrained(src)
    texts = finefood_texts()
    original = mean_pooled(ort.InferenceSession(str(src / "model.onnx")), tokenizer, texts)
    for ratio in (10, 16):  # issue 15's acceptance: 16x at 0.985 or more (codebooks)
        report = ProjClustCompressor.from_pretrained(src).compress(
            tmp_path / f"chosen{ratio}", ProjClustConfig(target_ratio=ratio, calibration_text=[str(austen)]))
        assert report.embedding_ratio >= ratio * 0.999
        assert report.method in ("projclust", "svd") or report.quantize == "codebook"
        chosen = mean_pooled(ort.InferenceSession(str(tmp_path / f"chosen{ratio}" / "model.onnx")), tokenizer, texts)
        cosine = (original * chosen).sum(1) / np.linalg.norm(original, axis=1) / np.linalg.norm(chosen, axis=1)
        assert cosine.mean() >= 0.985, (ratio, report.choice["chosen"]["label"], cosine.mean())


@pytest.mark.parametrize("case", ["device", "target", "calibration", "occupied", "foreign"])
def test_refusals_come_before_weighting_on_minilm(exported, tmp_path, nothing_weighted_or_clustered, case):
    """Issue 16: with a large calibration file, every refusal that does not depend on the fit comes before the
    rows are weighted (tokenizing the file) or clustered. Timings: benchmarks/bench_refusals.py."""
    texts = tmp_path / "calibration.txt"
    texts.write_text("The tea arrived quickly and tasted wonderful.\n" * 200_000)  # 9 MB
    out, overwrite = tmp_path / "out", False
    settings = dict(calibration_text=[str(texts)], **FAST)
    if case == "device":
        if __import__("torch").cuda.is_available():
            pytest.skip("refusing CUDA needs a machine without it")
        settings["device"], match = "cuda", "no CUDA GPU"
    elif case == "target":
        settings["target_ratio"], match = 1000, "ask for at most that ratio"
    elif case == "calibration":
        settings["calibration_text"], match = [str(texts), str(tmp_path / "missing.txt")], "does not exist"
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        overwrite, match = case == "foreign", "refusing to replace .* not an earlier output of this tool"
    with pytest.raises(ValueError, match=match):
        ProjClustCompressor.from_pretrained(exported["feature-extraction"]).compress(
            out, ProjClustConfig(**settings), overwrite=overwrite)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
