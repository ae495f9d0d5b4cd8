"""Compression with quantized storage end to end on tiny models: budgets in bytes, the chooser,
and ONNX Runtime's quantizers before and after us (issue 8)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_quantized_passes import ort_quantized
from tiny_models import embedding_model, write_model_dir

from projclust_onnx import ProjClustCompressor, ProjClustConfig
from projclust_onnx.core.budget import factorized_bytes

FAST = dict(n_init=2, anneal_steps=2, max_iter=10)


N, D = 2048, 128  # enough rows for quantized U to pay for float16 V, ranks in blocks of 32


@pytest.fixture
def model_dir(tmp_path):
    return write_model_dir(tmp_path / "tiny", embedding_model(N, D, position=False)[0]).parent


def on_file(path) -> int:
    """Bytes of what the rewrite wrote, read back from the file."""
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer
               if t.name.startswith("projclust/"))


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_quantized_u_buys_rank_and_the_report_matches_the_file(model_dir, tmp_path, quantize):
    out = tmp_path / quantize
    report = ProjClustCompressor.from_pretrained(model_dir).compress(
        out, ProjClustConfig(n_clusters=3, compression=0.8, quantize=quantize, **FAST))
    float_rank = ProjClustConfig(n_clusters=3, compression=0.8).rank_for(N, D)
    assert report.rank > float_rank and report.rank % 32 == 0  # 4/8-bit U buys a larger j, in whole blocks
    assert report.quantize == quantize and report.block_size == 32
    assert report.embedding_bytes_after == on_file(out / "model.onnx")
    assert factorized_bytes(N, D, 3, report.rank, 4, quantize) <= 0.2 * N * D * 4
    assert report.embedding_bytes_after <= 0.2 * N * D * 4 + 200  # plus a few int64 constants
    assert json.loads((out / "projclust_config.json").read_text())["storage"]["quantize"] == quantize
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert "GatherBlockQuantized" in ops


@pytest.mark.parametrize(("how", "storage", "resolved"), [("dynamic", "int8 per-tensor", "int8"),
                                                          ("nbits", "int4 block 32", "int4")])
def test_tables_quantized_by_onnxruntime_are_factored_and_requantized(model_dir, tmp_path, how, storage, resolved):
    """Before compress: quantize_dynamic's and MatMulNBitsQuantizer's tables are compressed, not refused."""
    src = tmp_path / f"q-{how}"
    write_model_dir(src, ort_quantized(onnx.load(str(model_dir / "model.onnx")), tmp_path, how))
    report = ProjClustCompressor.from_pretrained(src).compress(tmp_path / f"out-{how}",
                                                               ProjClustConfig(n_clusters=3, compression=0.5, **FAST))
    assert report.storage_before == storage and report.quantize == resolved  # requantized like the input
    assert report.parity_max_abs_diff <= 1e-4
    assert report.embedding_bytes_after < report.embedding_bytes_before


def test_chooser_hands_out_plain_quantization_where_it_wins(model_dir, tmp_path):
    out = tmp_path / "r4"
    report = ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(target_ratio=4, **FAST))
    assert report.method == "quantize" and report.choice["chosen"]["method"] == "quantize"
    labels = [c["label"] for c in report.choice["candidates"]]
    assert any(label.startswith("projclust") for label in labels) and any(label.startswith("svd") for label in labels)
    errors = [c["error"] for c in report.choice["candidates"]]
    assert errors == sorted(errors) and report.choice["chosen"]["error"] == errors[0]
    assert report.embedding_bytes_after <= N * D * 4 / 4 * 1.001 + 200


def test_chooser_picks_factors_or_codebooks_where_quantization_cannot_reach(model_dir, tmp_path):
    """At 12x no 8- or 4-bit quantization fits; 2-bit blocks, factors and codebooks do, the best one is kept,
    and everything compared fits the budget."""
    out = tmp_path / "r12"
    report = ProjClustCompressor.from_pretrained(model_dir).compress(out, ProjClustConfig(target_ratio=12, **FAST))
    labels = [c["label"] for c in report.choice["candidates"]]
    assert any(label.startswith("codebook") for label in labels) and any(" k=" in label for label in labels)
    assert {label for label in labels if label.startswith("plain")} <= {f"plain int2 block {b}" for b in (32, 64, 128)}
    assert report.quantize in ("codebook", "int2") or (report.method in ("svd", "projclust") and
                                             report.quantize in ("int8", "int4"))
    assert report.choice["chosen"]["error"] == min(c["error"] for c in report.choice["candidates"])
    assert all(c["bytes"] <= N * D * 4 / 12 * 1.001 for c in report.choice["candidates"])
    assert report.embedding_bytes_after == on_file(out / "model.onnx")
    assert "the lowest reconstruction error" in report.choice["reason"]


@pytest.mark.parametrize("how", ["dynamic", "nbits"])
def test_onnxruntime_quantizers_run_after_compress(model_dir, tmp_path, how):
    ours = tmp_path / "ours"
    ProjClustCompressor.from_pretrained(model_dir).compress(ours, ProjClustConfig(n_clusters=3, compression=0.5,
                                                                                  quantize="int4", **FAST))
    again = ort_quantized(onnx.load(str(ours / "model.onnx")), tmp_path, how)
    session = ort.InferenceSession(again.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 5, N - 1]])
    assert session.run(None, {"input_ids": ids})[0].shape == (1, 3, D)


def test_bad_quantization_settings_are_refused():
    with pytest.raises(ValueError, match="block_size=24 must be a power of two"):
        ProjClustConfig(block_size=24)
    with pytest.raises(ValueError, match="target_ratio=0.5 must be > 1"):
        ProjClustConfig(target_ratio=0.5)
    with pytest.raises(ValueError, match="quantize='int2' must be one of"):
        ProjClustConfig(quantize="int2")
    with pytest.raises(ValueError, match="rank=40 must be a multiple of block_size=32"):
        ProjClustConfig(rank=40, quantize="int4").rank_for(N, D)


def optimum_quantize(src, dst) -> None:
    import subprocess

    done = subprocess.run(["optimum-cli", "onnxruntime", "quantize", "--onnx_model", str(src), "--avx2", "-o",
                           str(dst)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow  # two optimum-cli processes, about 20 s: run by CI
def test_optimum_cli_quantize_both_orders(model_dir, tmp_path):
    """optimum-cli onnxruntime quantize runs on our output, and we run on its output."""
    ours = tmp_path / "ours"
    ProjClustCompressor.from_pretrained(model_dir).compress(ours, ProjClustConfig(n_clusters=3, compression=0.5,
                                                                                  quantize="int4", **FAST))
    optimum_quantize(ours, tmp_path / "ours-q")
    quantized = next((tmp_path / "ours-q").glob("*.onnx"))
    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input_ids": np.array([[0, N - 1]])})[0].shape == (1, 2, D)

    optimum_quantize(model_dir, tmp_path / "theirs")
    theirs = tmp_path / "theirs"
    report = ProjClustCompressor.from_pretrained(theirs, file_name=next(theirs.glob("*.onnx")).name).compress(
        tmp_path / "after", ProjClustConfig(n_clusters=3, compression=0.5, **FAST))
    assert report.parity_max_abs_diff <= 1e-4


def test_a_2_bit_table_is_read_and_factors_need_a_storage_of_u_named(model_dir, tmp_path):
    """A table stored in 2-bit blocks (ONNX Runtime's GatherBlockQuantized, bits=2) is recognised and decoded;
    factors cannot keep 2 bits, so without --quantize they are refused naming it, and compress with int4 U
    or with the chooser."""
    import onnx_ir as ir
    from projclust_onnx.passes import QuantizeEmbeddingPass, find_word_embedding, with_cleanup

    from projclust_onnx.common.errors import SettingError
    from projclust_onnx.storage.blocks import BlockInt2

    model = ir.load(str(model_dir / "model.onnx"))
    table = find_word_embedding(model.graph).dense()
    assert table.shape == (N, D)
    stored = BlockInt2(32).encode(table)
    with_cleanup(QuantizeEmbeddingPass(stored))(model)
    proto = ir.to_proto(model)  # named as another tool would name it
    for value in [*proto.graph.initializer, *proto.graph.node]:
        value.name = value.name.replace("projclust/", "int2/")
    for node in proto.graph.node:
        node.input[:] = [name.replace("projclust/", "int2/") for name in node.input]
        node.output[:] = [name.replace("projclust/", "int2/") for name in node.output]
    src = tmp_path / "int2"
    write_model_dir(src, proto)
    with pytest.raises(SettingError, match="int2 block 32.*int4 or int8"):
        ProjClustCompressor.from_pretrained(src).compress(tmp_path / "refused", ProjClustConfig(compression=0.5))
    assert not (tmp_path / "refused").exists()
    report = ProjClustCompressor.from_pretrained(src).compress(
        tmp_path / "int4", ProjClustConfig(n_clusters=3, compression=0.1, quantize="int4", **FAST))
    assert report.storage_before == "int2 block 32" and report.quantize == "int4"
    chosen = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "chosen", ProjClustConfig(target_ratio=20))
    assert chosen.storage_before == "int2 block 32" and chosen.embedding_bytes_after <= N * D * 4 / 20 * 1.001


def test_our_own_quantized_output_compresses_again(model_dir, tmp_path):
    """An output of this tool compressed again: what the first run wrote (named projclust/...) is set aside
    under earlier1/, so the second run's names neither collide nor reuse the first run's tensors; the report
    counts the bytes the second run wrote, as the file holds them."""
    first = ProjClustCompressor.from_pretrained(model_dir).compress(tmp_path / "q", ProjClustConfig(target_ratio=6))
    assert first.storage_after == "int4 block 32"
    again = ProjClustCompressor.from_pretrained(tmp_path / "q").compress(
        tmp_path / "again", ProjClustConfig(n_clusters=3, compression=0.3, quantize="int4", **FAST))
    assert again.storage_before == "int4 block 32" and again.parity_max_abs_diff <= 1e-4
    assert again.embedding_bytes_after == on_file(tmp_path / "again" / "model.onnx")
    names = {t.name for t in onnx.load(str(tmp_path / "again" / "model.onnx")).graph.initializer}
    assert any(name.startswith("projclust/U") for name in names)
    assert not any(name.startswith("earlier1/table") for name in names)  # the first run's table is gone


def test_a_target_ratio_on_our_int4_output_counts_against_the_float32_table(tmp_path):
    """The int4 blocks decode to float16 and a Cast makes them float32 again: the model's table is float32, so
    `target_ratio=6` on that output asks for n*d*4/6 bytes, not n*d*2/6 (half, read off the decoded float16)."""
    n, d = 512, 64  # a smaller table than N x D: the chooser picks plain int4 blocks here too, in a tenth of the time
    src = write_model_dir(tmp_path / "float", embedding_model(n, d, position=False)[0]).parent
    first = ProjClustCompressor.from_pretrained(src).compress(tmp_path / "r5", ProjClustConfig(target_ratio=5, **FAST))
    assert first.method == "quantize" and first.storage_after == "int4 block 32"
    again = ProjClustCompressor.from_pretrained(tmp_path / "r5").compress(tmp_path / "r6",
                                                                         ProjClustConfig(target_ratio=6, **FAST))
    assert again.storage_before == "int4 block 32" and again.dtype == "float32"
    assert again.choice["table_bytes"] == n * d * 4
    assert again.choice["budget_bytes"] == n * d * 4 // 6
    assert f"(table {n * d * 4:,} bytes / 6)" in again.choice["reason"]
    assert again.embedding_bytes_after <= n * d * 4 / 6 * 1.001 + 200
    assert again.embedding_ratio == pytest.approx(n * d * 4 / again.embedding_bytes_after)
    assert again.embedding_ratio >= 6
    assert "smaller than the float32 table" in dict(again.summary_rows())["embedding bytes"]
